//! qemu `guestfwd=…-cmd:` relay for the VM test: qemu runs it once per guest connection with the
//! connection on stdin/stdout; it connects to the metadata emulator on the host's loopback and
//! copies bytes both ways. It never writes to stderr (that would go into the guest's stream).
//!
//!   relay PORT         relay stdin/stdout <-> 127.0.0.1:PORT
//!   relay --free-port  print a free loopback TCP port and exit
//!
//! Built with plain rustc (std only) by tests/vm/run, so it needs no crate in the workspace.
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::exit;

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_default();
    if arg == "--free-port" {
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|_| exit(1));
        println!("{}", l.local_addr().map(|a| a.port()).unwrap_or_else(|_| exit(1)));
        return;
    }
    let Ok(port) = arg.parse::<u16>() else { exit(2) };
    let Ok(up) = TcpStream::connect(("127.0.0.1", port)) else { exit(1) };
    let Ok(mut up_w) = up.try_clone() else { exit(1) };
    // guest -> emulator
    let t = std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 16384];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if up_w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = up_w.shutdown(Shutdown::Write);
    });
    // emulator -> guest
    let mut up_r = up;
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 16384];
    loop {
        match up_r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stdout.write_all(&buf[..n]).is_err() || stdout.flush().is_err() {
                    break;
                }
            }
        }
    }
    drop(t); // the guest side may still be open; exiting closes it
    exit(0);
}
