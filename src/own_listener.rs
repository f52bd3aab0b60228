//! Whether a listening TCP socket on a port belongs to this process.
//!
//! `/readyz` must not turn ready because *another* process accepts on the public port: then
//! this gateway failed to bind it and is about to exit, and a load balancer (or a test) would
//! send traffic to whatever holds the port. On Linux, the kernel's socket table
//! (`/proc/self/net/tcp`, `tcp6`) names the inode of every listening socket, and
//! `/proc/self/fd` lists the inodes of this process's own sockets.

use std::collections::HashSet;
use std::fs;

/// `Some(true)` if this process has a socket listening on TCP `port`, `Some(false)` if only
/// other processes do, `None` where `/proc` cannot tell (not Linux, or a socket table that
/// does not list the port at all).
pub fn listening_here(port: u16) -> Option<bool> {
    listening_in("self", port)
}

/// The same question about process `pid` (the test harness asks it of the gateway it started).
pub fn process_listening(pid: u32, port: u16) -> Option<bool> {
    listening_in(&pid.to_string(), port)
}

/// Whether a test may take process `pid` to be what answers on `port`: it is seen listening
/// there on Linux; elsewhere `/proc` cannot tell, and the answer is yes.
pub fn process_owns_port(pid: u32, port: u16) -> bool {
    process_listening(pid, port).unwrap_or(!cfg!(target_os = "linux"))
}

fn listening_in(proc_entry: &str, port: u16) -> Option<bool> {
    let ours = socket_inodes(proc_entry)?;
    let mut listed = false;
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{proc_entry}/net/{table}")) else {
            continue;
        };
        for (_, inode) in listeners(&text).filter(|(p, _)| *p == port) {
            if ours.contains(&inode) {
                return Some(true);
            }
            listed = true;
        }
    }
    listed.then_some(false)
}

/// Inodes of the sockets among the file descriptors of `/proc/{proc_entry}`.
fn socket_inodes(proc_entry: &str) -> Option<HashSet<u64>> {
    let fds = fs::read_dir(format!("/proc/{proc_entry}/fd")).ok()?;
    Some(
        fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
            .filter_map(|target| {
                let target = target.to_str()?;
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            })
            .collect(),
    )
}

/// (local port, inode) of each listening socket in a `/proc/net/tcp`-style table.
fn listeners(table: &str) -> impl Iterator<Item = (u16, u64)> + '_ {
    const LISTEN: &str = "0A";
    table.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
        if *state != LISTEN {
            return None;
        }
        let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
        Some((port, inode.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::process::{Command, Stdio};

    #[test]
    fn the_table_format_is_read() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000 100 0 0 10 0\n\
           1: 0100007F:1F91 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000 20 4 30 10 -1\n";
        assert_eq!(listeners(table).collect::<Vec<_>>(), vec![(8080, 4242)]);
    }

    #[test]
    fn a_listener_of_this_process_is_ours_and_another_process_s_is_not() {
        let mine = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = mine.local_addr().expect("addr").port();
        assert_eq!(listening_here(port), Some(true));
        drop(mine);
        assert_eq!(
            listening_here(port),
            None,
            "nobody listens: nothing to tell"
        );

        let mut other = Command::new("python3")
            .args([
                "-c",
                "import socket, sys, time\n\
                 s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
                 print(s.getsockname()[1], flush=True); time.sleep(30)",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(other.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("port");
        let theirs: u16 = line.trim().parse().expect("a port");
        let answer = listening_here(theirs);
        let _ = other.kill();
        let _ = other.wait();
        assert_eq!(
            answer,
            Some(false),
            "another process's listener is not ours"
        );
    }
}
