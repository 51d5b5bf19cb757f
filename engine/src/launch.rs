//! Where this process sits in a data-parallel run, read from the launcher's environment, and the
//! communicator that connects it to the others.
//!
//! Launchers and their variables (the first complete set found wins, in this order):
//! - mpirun (Open MPI): `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`, `OMPI_COMM_WORLD_LOCAL_RANK`;
//! - torchrun-style: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`;
//! - srun (SLURM): `SLURM_PROCID`, `SLURM_STEP_NUM_TASKS` (else `SLURM_NTASKS`), `SLURM_LOCALID`. Only inside
//!   a job step (`SLURM_STEP_ID` set): an sbatch script itself also carries `SLURM_NTASKS` and `SLURM_PROCID`
//!   but is one process.
//!
//! A world of one is a plain single-process run. A larger world needs a communication engine: MPI with the
//! `mpi` feature. Under mpirun and srun the launcher's world must match MPI's; a torchrun-style launch, and
//! an srun launch without PMI for MPI but with `MASTER_ADDR` exported, form their MPI world at
//! `MASTER_ADDR:MASTER_PORT` ([`crate::rendezvous`]). A build without the feature refuses to
//! start rather than train the same model `world` times over.

use std::sync::Arc;

use ecstrain_systems::parallel::{Collective, SingleProcess};

/// This process's place in the run, as the launcher describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchEnv {
    /// Global index of this process, `0..world`.
    pub rank: usize,
    /// Processes in the run.
    pub world: usize,
    /// Index of this process on its node (which GPU it would take).
    pub local_rank: usize,
    /// The launcher the values came from: `mpirun`, `torchrun`, `srun`, or `none`.
    pub launcher: &'static str,
}

impl LaunchEnv {
    /// A single process (no launcher variables).
    pub const SINGLE: LaunchEnv = LaunchEnv { rank: 0, world: 1, local_rank: 0, launcher: "none" };

    /// Reads the launcher variables through `get` (the process environment in [`LaunchEnv::from_env`]).
    pub fn detect(get: impl Fn(&str) -> Option<String>) -> Result<LaunchEnv, String> {
        let sets: [(&'static str, [&str; 3]); 3] = [
            ("mpirun", ["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"]),
            ("torchrun", ["RANK", "WORLD_SIZE", "LOCAL_RANK"]),
            ("srun", ["SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"]),
        ];
        for (launcher, [rank_key, world_key, local_key]) in sets {
            let world_key = match launcher {
                "srun" if get("SLURM_STEP_ID").is_none() => continue,
                "srun" if get(world_key).is_none() => "SLURM_NTASKS",
                _ => world_key,
            };
            let (Some(rank), Some(world)) = (get(rank_key), get(world_key)) else { continue };
            let num = |key: &str, v: &str| {
                v.trim().parse::<usize>().map_err(|_| format!("{launcher}: {key}={v:?} is not a non-negative integer"))
            };
            let rank = num(rank_key, &rank)?;
            let world = num(world_key, &world)?;
            let local_rank = match get(local_key) {
                Some(v) => num(local_key, &v)?,
                None => 0,
            };
            if world == 0 || rank >= world {
                return Err(format!(
                    "{launcher}: {rank_key}={rank} is out of range for {world_key}={world} (valid: 0..{world})"
                ));
            }
            return Ok(LaunchEnv { rank, world, local_rank, launcher });
        }
        Ok(LaunchEnv::SINGLE)
    }

    /// [`LaunchEnv::detect`] on the process environment.
    pub fn from_env() -> Result<LaunchEnv, String> {
        LaunchEnv::detect(|k| std::env::var(k).ok())
    }
}

/// The communicator of this process: a [`SingleProcess`] for a world of one, MPI for more (feature `mpi`).
/// A failure is a usage error (exit 2) before anything is read or written.
pub fn connect(env: LaunchEnv) -> Result<Arc<dyn Collective>, String> {
    if env.world == 1 {
        return Ok(Arc::new(SingleProcess));
    }
    connect_many(env)
}

/// Whether this launch forms its MPI world through the `MASTER_ADDR:MASTER_PORT` rendezvous
/// ([`crate::rendezvous`]) instead of taking the one the launcher made: always torchrun-style; srun when
/// it started the ranks without a process-management interface for MPI (no `PMIX_RANK` / `PMI_RANK`: Open
/// MPI would come up as N singletons) and the job script exported `MASTER_ADDR`.
pub fn uses_rendezvous(env: &LaunchEnv, get: impl Fn(&str) -> Option<String>) -> bool {
    match env.launcher {
        "torchrun" => true,
        "srun" => get("PMIX_RANK").is_none() && get("PMI_RANK").is_none() && get("MASTER_ADDR").is_some(),
        _ => false,
    }
}

#[cfg(feature = "mpi")]
fn connect_many(env: LaunchEnv) -> Result<Arc<dyn Collective>, String> {
    let get = |k: &str| std::env::var(k).ok();
    if uses_rendezvous(&env, get) {
        let addr = crate::rendezvous::StoreAddr::from_env(get)?;
        return Ok(Arc::new(crate::mpi_comm::MpiCollective::rendezvous(env, &addr)?));
    }
    let comm = crate::mpi_comm::MpiCollective::init()?;
    if comm.world() != env.world || comm.rank() != env.rank {
        return Err(format!(
            "{} says rank {} of {}, MPI says rank {} of {}: launch the engine directly with mpirun, or with srun --mpi=pmix, or export MASTER_ADDR and MASTER_PORT (rank 0's host and a free port) for the engine's own rendezvous",
            env.launcher,
            env.rank,
            env.world,
            comm.rank(),
            comm.world()
        ));
    }
    Ok(Arc::new(comm))
}

#[cfg(not(feature = "mpi"))]
fn connect_many(env: LaunchEnv) -> Result<Arc<dyn Collective>, String> {
    Err(format!(
        "launched by {} as rank {} of {}, but this engine was built without the mpi feature: cargo build --release --features mpi (needs libopenmpi-dev and libclang-dev)",
        env.launcher, env.rank, env.world
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn detect(vars: &[(&str, &str)]) -> Result<LaunchEnv, String> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        LaunchEnv::detect(|k| m.get(k).cloned())
    }

    #[test]
    fn reads_each_launcher() {
        assert_eq!(detect(&[]).unwrap(), LaunchEnv::SINGLE);
        let e = detect(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ]);
        assert_eq!(e.unwrap(), LaunchEnv { rank: 1, world: 2, local_rank: 1, launcher: "mpirun" });
        let e = detect(&[("RANK", "3"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1")]).unwrap();
        assert_eq!((e.rank, e.world, e.local_rank, e.launcher), (3, 4, 1, "torchrun"));
        let srun = [("SLURM_STEP_ID", "0"), ("SLURM_PROCID", "2"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "0")];
        let e = detect(&srun).unwrap();
        assert_eq!((e.rank, e.world, e.launcher), (2, 8, "srun"));
    }

    #[test]
    fn an_sbatch_script_is_one_process() {
        assert_eq!(detect(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")]).unwrap(), LaunchEnv::SINGLE);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = detect(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.contains("RANK=2") && e.contains("valid: 0..2"), "{e}");
        let e = detect(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.contains("RANK=\"x\""), "{e}");
    }

    #[test]
    fn torchrun_and_srun_without_pmi_meet_at_master_addr() {
        let torchrun = LaunchEnv { rank: 1, world: 2, local_rank: 1, launcher: "torchrun" };
        let srun = LaunchEnv { launcher: "srun", ..torchrun };
        let mpirun = LaunchEnv { launcher: "mpirun", ..torchrun };
        let vars = |v: &'static [(&'static str, &'static str)]| {
            move |k: &str| v.iter().find(|(n, _)| *n == k).map(|(_, x)| x.to_string())
        };
        assert!(uses_rendezvous(&torchrun, vars(&[])));
        assert!(uses_rendezvous(&srun, vars(&[("MASTER_ADDR", "n1")])));
        assert!(!uses_rendezvous(&srun, vars(&[("MASTER_ADDR", "n1"), ("PMIX_RANK", "1")])));
        assert!(!uses_rendezvous(&srun, vars(&[("MASTER_ADDR", "n1"), ("PMI_RANK", "1")])));
        assert!(!uses_rendezvous(&srun, vars(&[])));
        assert!(!uses_rendezvous(&mpirun, vars(&[("MASTER_ADDR", "n1")])));
    }

    #[cfg(not(feature = "mpi"))]
    #[test]
    fn a_world_without_mpi_is_refused() {
        let e = connect(LaunchEnv { rank: 0, world: 2, local_rank: 0, launcher: "mpirun" }).err().unwrap();
        assert!(e.contains("built without the mpi feature: cargo build"), "{e}");
    }
}
