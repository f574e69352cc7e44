//! A throwaway `redis-server` on a free loopback port, for tests and benchmarks of the Redis
//! store: started with no persistence, stopped and restarted on the same port to play an outage,
//! killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on `127.0.0.1`.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    tls: Option<Tls>,
}

/// The TLS side of a server from [`RedisServer::start_tls`].
#[derive(Debug)]
struct Tls {
    port: u16,
    dir: std::path::PathBuf,
    ca: super::TestCa,
}

/// Where the server binary is: `$TOLLGATE_REDIS_SERVER`, else `redis-server` on the `PATH`.
fn binary() -> String {
    std::env::var("TOLLGATE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`. Fails with a message
    /// saying how to install Redis when the binary is missing.
    pub fn start() -> std::io::Result<RedisServer> {
        let mut last = None;
        // A port found free can be taken before the server binds it: try a few.
        for _ in 0..5 {
            let port = free_port()?;
            let mut server = RedisServer {
                port,
                child: None,
                tls: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("redis-server did not start")))
    }

    /// Starts a server that also serves TLS (`rediss://`) with a certificate from a throwaway
    /// CA ([`RedisServer::ca`]); the plain port stays open for [`RedisServer::url`].
    pub fn start_tls() -> std::io::Result<RedisServer> {
        let issued = super::tls::issue().map_err(|e| std::io::Error::other(e.to_string()))?;
        let port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("tollgate-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("server.crt"), &issued.cert_pem)?;
        std::fs::write(dir.join("server.key"), issued.key.serialize_pem())?;
        std::fs::write(dir.join("ca.crt"), issued.ca.cert_pem())?;
        let mut server = RedisServer {
            port: free_port()?,
            child: None,
            tls: Some(Tls {
                port,
                dir,
                ca: issued.ca,
            }),
        };
        server.spawn()?;
        Ok(server)
    }

    /// The CA that signed a TLS server's certificate.
    pub fn ca(&self) -> Option<&super::TestCa> {
        self.tls.as_ref().map(|t| &t.ca)
    }

    /// The CA certificate's file (PEM), for `tls_ca_file`.
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        self.tls.as_ref().map(|t| t.dir.join("ca.crt"))
    }

    /// `rediss://localhost:<tls port>` for a server from [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls
            .as_ref()
            .map(|t| format!("rediss://localhost:{}", t.port))
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if let Some(t) = &self.tls {
            let file = |name: &str| t.dir.join(name).display().to_string();
            args.extend([
                "--tls-port".to_owned(),
                t.port.to_string(),
                "--tls-cert-file".to_owned(),
                file("server.crt"),
                "--tls-key-file".to_owned(),
                file("server.key"),
                "--tls-ca-cert-file".to_owned(),
                file("ca.crt"),
                "--tls-auth-clients".to_owned(),
                "no".to_owned(),
            ]);
        }
        let child = Command::new(binary())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "{} not found: install Redis (apt-get install redis-server) or set \
                             TOLLGATE_REDIS_SERVER; .ci/run installs it",
                            binary()
                        ),
                    )
                } else {
                    e
                }
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(std::io::Error::other(format!(
                    "redis-server exited at start ({status}); port {} taken?",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        Err(std::io::Error::other("redis-server did not answer PING"))
    }

    fn ping(&self) -> bool {
        let Ok(mut tcp) = TcpStream::connect_timeout(
            &(Ipv4Addr::LOCALHOST, self.port).into(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_millis(500)));
        if std::io::Write::write_all(&mut tcp, b"PING\r\n").is_err() {
            return false;
        }
        let mut line = String::new();
        BufReader::new(tcp).read_line(&mut line).is_ok() && line.starts_with("+PONG")
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the server is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and waits for it to exit.
    pub fn stop(&mut self) {
        self.resume();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers — a slow Redis.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(child) = &self.child
            && let Ok(pid) = libc::pid_t::try_from(child.id())
        {
            // SAFETY: kill(2) on our own child's pid; no memory is touched.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// Starts the server again on the same port (empty: nothing was persisted).
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = &self.tls {
            let _ = std::fs::remove_dir_all(&t.dir);
        }
    }
}
