//! Launcher environments in a build without the `mpi` feature: a world of one trains as usual; a larger
//! world is refused with exit 2 and the build command, never trained world-times over.
#![cfg(not(feature = "mpi"))]

mod common;

use std::process::Command;

use common::*;

#[test]
fn a_multi_process_launch_without_mpi_exits_2() {
    let dir = scratch("launch_env");
    let save = dir.join("run");
    let cfg = write_config(&dir, "c.yaml", &digits_yaml(&save).replace("epochs: 2", "epochs: 1"));
    for vars in [[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2")], [("RANK", "1"), ("WORLD_SIZE", "4")]] {
        let out = Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(["--config", cfg.to_str().unwrap()])
            .envs(vars)
            .current_dir(repo())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("built without the mpi feature: cargo build"), "{}", text(&out));
        assert!(!save.exists(), "it trained anyway");
    }
    // A world of one is a plain run.
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["--config", cfg.to_str().unwrap()])
        .envs([("RANK", "0"), ("WORLD_SIZE", "1")])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
