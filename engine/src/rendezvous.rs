//! The torchrun-style rendezvous: processes started with `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`
//! and `MASTER_PORT` (torchrun, or any launcher that sets the same variables; also srun without PMI for MPI
//! when the job script exports `MASTER_ADDR` / `MASTER_PORT`) find each other and form one MPI world, so the collectives are still Open MPI's (feature `mpi`) and NCCL's id travels over it as in an
//! mpirun launch.
//!
//! Open MPI joins independently started processes with `MPI_Comm_accept` / `MPI_Comm_connect`, which needs an
//! `ompi-server` that every process reaches. So:
//! 1. rank 0 listens on `MASTER_PORT` (TCP), starts `ompi-server` (killed when the run ends), initialises MPI
//!    pointed at it and opens an MPI port;
//! 2. every other rank connects to `MASTER_ADDR:MASTER_PORT` (retrying until the timeout), says its rank and
//!    receives the server's URI and the port name, then initialises MPI pointed at the same server;
//! 3. the world grows one rank at a time, in rank order: rank 0 tells rank k its turn over TCP, the ranks
//!    already joined accept and rank k connects, and the intercommunicator is merged with the newcomer
//!    last, so MPI's ranks are the launcher's.
//!
//! The TCP exchange carries only these two strings; every byte of training traffic goes through MPI.
//! Under torchrun itself the agent's own store holds `MASTER_PORT` (`TORCHELASTIC_USE_AGENT_STORE=True`),
//! so the rendezvous takes the port above it; `ECSTRAIN_RENDEZVOUS_PORT` overrides both.

use std::time::Duration;

/// Where rank 0 listens for the other ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreAddr {
    /// `MASTER_ADDR`: rank 0's host, as the other ranks reach it.
    pub host: String,
    /// The TCP port of the rendezvous.
    pub port: u16,
    /// How long a rank waits for the others (`ECSTRAIN_RENDEZVOUS_TIMEOUT` seconds; 300 by default).
    pub timeout: Duration,
}

impl StoreAddr {
    /// Reads the rendezvous variables through `get` (the process environment in the engine).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<StoreAddr, String> {
        let need = |key: &str| {
            get(key).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                format!("{key} is not set: the ranks of a torchrun-style launch (or of srun without PMI for MPI) meet at MASTER_ADDR:MASTER_PORT (rank 0's host and a free TCP port)")
            })
        };
        let host = need("MASTER_ADDR")?.trim().to_string();
        let port_of = |key: &str, v: &str| {
            v.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("{key}={v:?} is not a TCP port (1..65535)"))
        };
        let master = port_of("MASTER_PORT", &need("MASTER_PORT")?)?;
        let port = match get("ECSTRAIN_RENDEZVOUS_PORT") {
            Some(v) => port_of("ECSTRAIN_RENDEZVOUS_PORT", &v)?,
            None if get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true")) => {
                master.checked_add(1).ok_or("MASTER_PORT=65535 is held by torchrun's store and no port is above it; set ECSTRAIN_RENDEZVOUS_PORT")?
            }
            None => master,
        };
        let timeout = match get("ECSTRAIN_RENDEZVOUS_TIMEOUT") {
            None => Duration::from_secs(300),
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("ECSTRAIN_RENDEZVOUS_TIMEOUT={v:?} is not a positive number of seconds"))?,
        };
        Ok(StoreAddr { host, port, timeout })
    }
}

#[cfg(feature = "mpi")]
pub(crate) use joined::{join_world, OmpiServer};

#[cfg(feature = "mpi")]
mod joined {
    use std::ffi::{CStr, CString};
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream, ToSocketAddrs};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use mpi::environment::Universe;
    use mpi::ffi;
    use mpi::raw::FromRaw;
    use mpi::topology::SimpleCommunicator;

    use super::StoreAddr;
    use crate::launch::LaunchEnv;

    /// The greeting a rank sends first, so a stray connection to the port is told apart.
    const HELLO: &str = "ecstrain-rendezvous";

    /// Open MPI's name server, started by rank 0 for the run; dropping it stops it.
    pub struct OmpiServer {
        child: Child,
        dir: PathBuf,
        uri: String,
    }

    impl OmpiServer {
        /// Starts `ompi-server` and waits for the URI it reports.
        fn start(timeout: Duration) -> Result<OmpiServer, String> {
            let exe = on_path("ompi-server").ok_or(
                "a torchrun-style launch needs Open MPI's ompi-server on PATH to join the ranks (apt-get install openmpi-bin)",
            )?;
            let dir = private_temp_dir("ecstrain-ompi-server")?;
            let (uri_file, log_file) = (dir.join("uri"), dir.join("stderr"));
            let log =
                std::fs::File::create(&log_file).map_err(|e| format!("cannot create {}: {e}", log_file.display()))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("--no-daemonize").arg("-r").arg(&uri_file).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
            stop_with_parent(&mut cmd);
            let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
            let mut server = OmpiServer { child, dir, uri: String::new() };
            let deadline = Instant::now() + timeout.min(Duration::from_secs(60));
            loop {
                let text = std::fs::read_to_string(&uri_file).unwrap_or_default();
                if text.ends_with('\n') && !text.trim().is_empty() {
                    server.uri = text.trim().to_string();
                    return Ok(server);
                }
                if let Ok(Some(status)) = server.child.try_wait() {
                    let err = std::fs::read_to_string(&log_file).unwrap_or_default();
                    return Err(format!("ompi-server exited ({status}) before reporting its URI: {}", err.trim()));
                }
                if Instant::now() > deadline {
                    return Err("ompi-server did not report its URI within a minute".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    impl Drop for OmpiServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A new directory only this user can enter, under the temporary directory. Made with `create_dir` (never
    /// reusing an entry that is already there, which on a shared /tmp another user could have planted as a link
    /// to redirect the server's files), under a name that differs on each try.
    fn private_temp_dir(prefix: &str) -> Result<PathBuf, String> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let pid = std::process::id();
        let mut last = None;
        for attempt in 0..64u32 {
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            let dir = base.join(format!("{prefix}-{pid}-{nanos:08x}{attempt}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(dir),
                Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
            }
        }
        Err(format!(
            "cannot create a private directory under {}: names such as {} are taken",
            base.display(),
            last.map_or_else(String::new, |d| d.display().to_string())
        ))
    }

    /// The server gets SIGTERM if rank 0 dies without dropping it (a kill, an abort), so no orphan stays.
    fn stop_with_parent(cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the child between fork and exec and only makes one async-signal-safe
        // system call.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }

    fn on_path(name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
    }

    /// One line from `stream`, waiting at most until `deadline`.
    fn read_line(reader: &mut BufReader<TcpStream>, deadline: Instant, what: &str) -> Result<String, String> {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        reader.get_ref().set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => Err(format!("the rendezvous connection closed while waiting for {what}")),
            Ok(_) => Ok(line.trim_end().to_string()),
            Err(e) => Err(format!("rendezvous: no {what} ({e})")),
        }
    }

    fn send(stream: &mut TcpStream, text: &str) -> Result<(), String> {
        stream
            .write_all(text.as_bytes())
            .and_then(|_| stream.flush())
            .map_err(|e| format!("rendezvous: send failed ({e})"))
    }

    /// Initialises MPI (a singleton pointed at `uri`'s server) with the threading the engine needs.
    fn init_mpi(uri: &str) -> Result<Universe, String> {
        // Read by MPI_Init, which comes next on this thread; no other thread touches the environment here.
        std::env::set_var("OMPI_MCA_pmix_server_uri", uri);
        crate::mpi_comm::initialize()
    }

    /// `MPI_Comm_accept` over `intra` (every member calls it; rank 0's port counts) and the merge that puts the
    /// newcomer last. Frees both inputs except `MPI_COMM_SELF`.
    ///
    /// # Safety
    /// MPI is initialised and `intra` is a valid intracommunicator of this process.
    unsafe fn accept_one(mut intra: ffi::MPI_Comm, port: &CStr) -> ffi::MPI_Comm {
        let mut inter: ffi::MPI_Comm = std::mem::zeroed();
        ffi::MPI_Comm_accept(port.as_ptr(), ffi::RSMPI_INFO_NULL, 0, intra, &mut inter);
        let mut merged: ffi::MPI_Comm = std::mem::zeroed();
        ffi::MPI_Intercomm_merge(inter, 0, &mut merged);
        ffi::MPI_Comm_free(&mut inter);
        if intra != ffi::RSMPI_COMM_SELF {
            ffi::MPI_Comm_free(&mut intra);
        }
        merged
    }

    /// `MPI_Comm_connect` to the ranks already joined, merged with this process last.
    ///
    /// # Safety
    /// MPI is initialised.
    unsafe fn connect_to(port: &CStr) -> ffi::MPI_Comm {
        let mut inter: ffi::MPI_Comm = std::mem::zeroed();
        ffi::MPI_Comm_connect(port.as_ptr(), ffi::RSMPI_INFO_NULL, 0, ffi::RSMPI_COMM_SELF, &mut inter);
        let mut merged: ffi::MPI_Comm = std::mem::zeroed();
        ffi::MPI_Intercomm_merge(inter, 1, &mut merged);
        ffi::MPI_Comm_free(&mut inter);
        merged
    }

    /// Forms the MPI world of a torchrun-style launch (module doc): the universe, the world communicator (its
    /// ranks are the launcher's) and, on rank 0, the name server to keep alive until MPI is finalised.
    pub fn join_world(
        env: LaunchEnv,
        addr: &StoreAddr,
    ) -> Result<(Universe, SimpleCommunicator, Option<OmpiServer>), String> {
        let deadline = Instant::now() + addr.timeout;
        let (universe, comm, server) =
            if env.rank == 0 { lead(env, addr, deadline)? } else { follow(env, addr, deadline)? };
        // SAFETY: `comm` is the merged intracommunicator this process owns from here on.
        let world = unsafe { SimpleCommunicator::from_raw(comm) };
        Ok((universe, world, server))
    }

    type Joined = (Universe, ffi::MPI_Comm, Option<OmpiServer>);

    fn lead(env: LaunchEnv, addr: &StoreAddr, deadline: Instant) -> Result<Joined, String> {
        let listener = TcpListener::bind(("0.0.0.0", addr.port)).map_err(|e| {
            format!(
                "rank 0 cannot listen on port {} for the rendezvous ({e}); set MASTER_PORT to a free port",
                addr.port
            )
        })?;
        let server = OmpiServer::start(addr.timeout)?;
        let universe = init_mpi(&server.uri)?;
        let mut port_buf = vec![0u8; ffi::MPI_MAX_PORT_NAME as usize + 1];
        // SAFETY: MPI is initialised; the buffer holds MPI_MAX_PORT_NAME characters and the terminator.
        unsafe { ffi::MPI_Open_port(ffi::RSMPI_INFO_NULL, port_buf.as_mut_ptr().cast()) };
        let port = CStr::from_bytes_until_nul(&port_buf).map_err(|e| e.to_string())?.to_owned();
        let reply = format!("{}\n{}\n", server.uri, port.to_string_lossy());

        // Every other rank says hello; each gets the URI and the port, and waits for its turn.
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut peers: Vec<Option<TcpStream>> = (0..env.world).map(|_| None).collect();
        let mut joined = 1;
        while joined < env.world {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                    let mut reader = BufReader::new(stream);
                    let Ok(hello) = read_line(&mut reader, Instant::now() + Duration::from_secs(10), "a greeting")
                    else {
                        continue;
                    };
                    let mut words = hello.split(' ');
                    let (Some(HELLO), Some(r), Some(w)) = (words.next(), words.next(), words.next()) else { continue };
                    let (r, w) = (r.parse::<usize>().unwrap_or(usize::MAX), w.parse::<usize>().unwrap_or(0));
                    if w != env.world {
                        return Err(format!("rendezvous: a rank says WORLD_SIZE={w}, rank 0 has {}", env.world));
                    }
                    if r == 0 || r >= env.world || peers[r].is_some() {
                        return Err(format!(
                            "rendezvous: two processes claim RANK={r} (or it is out of range 1..{})",
                            env.world
                        ));
                    }
                    let mut stream = reader.into_inner();
                    send(&mut stream, &reply)?;
                    peers[r] = Some(stream);
                    joined += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let missing: Vec<String> =
                            (1..env.world).filter(|&r| peers[r].is_none()).map(|r| r.to_string()).collect();
                        return Err(format!(
                            "rendezvous on port {}: ranks {} did not arrive within {:?} (ECSTRAIN_RENDEZVOUS_TIMEOUT)",
                            addr.port,
                            missing.join(", "),
                            addr.timeout
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("rendezvous: accept failed ({e})")),
            }
        }
        // SAFETY: reads the constant handle of MPI_COMM_SELF.
        let mut comm = unsafe { ffi::RSMPI_COMM_SELF };
        for (k, peer) in peers.iter_mut().enumerate().skip(1) {
            send(peer.as_mut().expect("every rank arrived"), "go\n")?;
            // SAFETY: MPI is initialised; `comm` is this process's current intracommunicator.
            comm = unsafe { accept_one(comm, &port) };
            debug_assert_eq!(k + 1, comm_size(comm));
        }
        // SAFETY: the port was opened above and every rank has connected.
        unsafe { ffi::MPI_Close_port(port.as_ptr()) };
        Ok((universe, comm, Some(server)))
    }

    fn follow(env: LaunchEnv, addr: &StoreAddr, deadline: Instant) -> Result<Joined, String> {
        let target = format!("{}:{}", addr.host, addr.port);
        let stream = loop {
            let tried = target
                .to_socket_addrs()
                .map_err(|e| format!("MASTER_ADDR={:?} does not resolve ({e})", addr.host))?
                .find_map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok());
            match tried {
                Some(s) => break s,
                None if Instant::now() > deadline => {
                    return Err(format!(
                        "rank {}: nothing answered at {target} within {:?} (is rank 0 running? ECSTRAIN_RENDEZVOUS_TIMEOUT)",
                        env.rank, addr.timeout
                    ))
                }
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let mut reader = BufReader::new(stream);
        send(reader.get_mut(), &format!("{HELLO} {} {}\n", env.rank, env.world))?;
        let uri = read_line(&mut reader, deadline, "ompi-server's URI from rank 0")?;
        let port = read_line(&mut reader, deadline, "the MPI port from rank 0")?;
        let port = CString::new(port).map_err(|e| e.to_string())?;
        let universe = init_mpi(&uri)?;
        let go = read_line(&mut reader, deadline, "rank 0's go")?;
        if go != "go" {
            return Err(format!("rendezvous: unexpected message {go:?} from rank 0"));
        }
        // SAFETY: MPI is initialised; every communicator passed on is the one the previous call returned.
        let mut comm = unsafe { connect_to(&port) };
        for _ in env.rank + 1..env.world {
            comm = unsafe { accept_one(comm, &port) };
        }
        Ok((universe, comm, None))
    }

    fn comm_size(comm: ffi::MPI_Comm) -> usize {
        let mut n = 0;
        // SAFETY: `comm` is a valid communicator.
        unsafe { ffi::MPI_Comm_size(comm, &mut n) };
        n as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn addr(vars: &[(&str, &str)]) -> Result<StoreAddr, String> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        StoreAddr::from_env(|k| m.get(k).cloned())
    }

    #[test]
    fn reads_master_addr_and_port() {
        let a = addr(&[("MASTER_ADDR", "node1"), ("MASTER_PORT", "29500")]).unwrap();
        assert_eq!((a.host.as_str(), a.port, a.timeout), ("node1", 29500, Duration::from_secs(300)));
    }

    #[test]
    fn under_torchrun_the_port_above_the_agent_store() {
        let vars = [("MASTER_ADDR", "h"), ("MASTER_PORT", "29500"), ("TORCHELASTIC_USE_AGENT_STORE", "True")];
        assert_eq!(addr(&vars).unwrap().port, 29501);
        let mut with_own = vars.to_vec();
        with_own.push(("ECSTRAIN_RENDEZVOUS_PORT", "4000"));
        with_own.push(("ECSTRAIN_RENDEZVOUS_TIMEOUT", "2.5"));
        let a = addr(&with_own).unwrap();
        assert_eq!((a.port, a.timeout), (4000, Duration::from_millis(2500)));
    }

    #[test]
    fn missing_or_bad_values_name_the_variable() {
        let e = addr(&[("MASTER_PORT", "29500")]).unwrap_err();
        assert!(e.contains("MASTER_ADDR is not set"), "{e}");
        let e = addr(&[("MASTER_ADDR", "h")]).unwrap_err();
        assert!(e.contains("MASTER_PORT is not set"), "{e}");
        let e = addr(&[("MASTER_ADDR", "h"), ("MASTER_PORT", "70000")]).unwrap_err();
        assert!(e.contains("MASTER_PORT=\"70000\" is not a TCP port"), "{e}");
        let e = addr(&[("MASTER_ADDR", "h"), ("MASTER_PORT", "1"), ("ECSTRAIN_RENDEZVOUS_TIMEOUT", "-1")]).unwrap_err();
        assert!(e.contains("ECSTRAIN_RENDEZVOUS_TIMEOUT=\"-1\""), "{e}");
    }
}
