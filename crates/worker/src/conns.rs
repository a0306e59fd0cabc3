//! In-flight connections to a replica, for draining.
//!
//! The worker does not see requests; it sees the kernel's connection table.
//! A replica's in-flight work is counted as its ESTABLISHED TCP connections
//! on its port (`/proc/net/tcp` and `/proc/net/tcp6`): an upper bound on its
//! in-flight requests, since an idle keep-alive connection counts too. The
//! drain waits for this count to reach zero (up to the grace period) before
//! SIGTERM, so a server that does not finish requests on SIGTERM still
//! gets to answer the ones it has.

use std::time::Duration;

use tokio::sync::watch;

/// How often [`watch_port`] re-reads the connection table.
const POLL: Duration = Duration::from_millis(100);

/// The TCP state code for ESTABLISHED in `/proc/net/tcp`.
const ESTABLISHED: &str = "01";

/// Counts lines of a `/proc/net/tcp`-format table whose local port is
/// `port` and whose state is ESTABLISHED.
pub fn count_established(table: &str, port: u16) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1);
            let state = fields.nth(1);
            let local_port = local
                .and_then(|l| l.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && state == Some(ESTABLISHED)
        })
        .count()
}

/// ESTABLISHED connections on local `port`, IPv4 and IPv6.
pub fn established(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|table| count_established(&table, port))
        .sum()
}

/// A counter of `port`'s established connections, refreshed every 100 ms
/// until the receiver is dropped.
pub fn watch_port(port: u16) -> watch::Receiver<usize> {
    let (tx, rx) = watch::channel(established(port));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(POLL) => {}
            }
            tx.send_if_modified(|n| {
                let now = established(port);
                let changed = *n != now;
                *n = now;
                changed
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0 20 4 30 10 -1
   2: 0100007F:D2A4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:D2A6 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0
   4: 0100007F:1F90 0100007F:D2A8 01 00000000:00000000 00:00000000 00000000  1000        0 4 1 0 20 4 30 10 -1
";

    #[test]
    fn counts_established_connections_on_the_local_port_only() {
        // Port 0x1F90 = 8080: the listener (0A) and TIME_WAIT (06) do not
        // count, nor does the client side whose remote port is 8080.
        assert_eq!(count_established(TABLE, 8080), 2);
        assert_eq!(count_established(TABLE, 0xD2A4), 1);
        assert_eq!(count_established(TABLE, 9090), 0);
        assert_eq!(count_established("", 8080), 0);
    }

    #[tokio::test]
    async fn sees_a_live_connection_come_and_go() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(established(port), 0);
        let client = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(established(port), 1);
        let mut rx = watch_port(port);
        drop(client);
        drop(server);
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|n| *n == 0))
            .await
            .expect("the count reaches 0 once both ends are closed")
            .unwrap();
    }
}
