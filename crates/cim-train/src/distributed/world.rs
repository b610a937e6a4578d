//! Who this process is in a data-parallel run, read from the environment the way torchrun
//! sets it: `WORLD_SIZE` processes, this one `RANK` (and `LOCAL_RANK` on its node), all
//! meeting rank 0 at `MASTER_ADDR:MASTER_PORT`. Without `WORLD_SIZE` the run is a single
//! process. Every missing or malformed value is an error naming the variable and value.

use anyhow::{Result, bail};

/// Where rank 0 listens for the rendezvous.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Master {
    /// `MASTER_ADDR`: a host name or an IP address.
    pub addr: String,
    /// `MASTER_PORT`.
    pub port: u16,
}

/// This process's place in the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    /// `RANK`: 0 for the process that coordinates and writes the run folder.
    pub rank: usize,
    /// `WORLD_SIZE`: processes taking part.
    pub size: usize,
    /// `LOCAL_RANK`: the rank among the processes of this node (picks the GPU).
    pub local_rank: usize,
    /// Rank 0's address; `None` for a single process.
    pub master: Option<Master>,
}

impl World {
    /// A run of one process.
    pub const SINGLE: World = World {
        rank: 0,
        size: 1,
        local_rank: 0,
        master: None,
    };

    /// The world described by this process's environment.
    pub fn from_env() -> Result<World> {
        World::from_vars(|name| std::env::var(name).ok())
    }

    /// The world described by `var` (a variable's value, `None` when unset).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<World> {
        let Some(size) = var("WORLD_SIZE") else {
            if let Some(rank) = var("RANK") {
                bail!(
                    "RANK={rank} is set but WORLD_SIZE is not: set both, or neither for a single process"
                );
            }
            return Ok(World::SINGLE);
        };
        let size = match size.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => bail!("WORLD_SIZE={size:?} is not a positive whole number"),
        };
        if size == 1 {
            if let Some(rank) = var("RANK").filter(|r| r.trim() != "0") {
                bail!("RANK={rank:?} with WORLD_SIZE=1: the only rank is 0");
            }
            return Ok(World::SINGLE);
        }
        let required = |name: &str| {
            var(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "{name} is not set, but WORLD_SIZE={size} asks for a distributed run: launch with torchrun, or set RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every process"
                )
            })
        };
        let below_size = |name: &str| -> Result<usize> {
            let value = required(name)?;
            match value.trim().parse::<usize>() {
                Ok(n) if n < size => Ok(n),
                Ok(_) => bail!("{name}={value:?} is not below WORLD_SIZE={size}"),
                Err(_) => bail!("{name}={value:?} is not a whole number"),
            }
        };
        let rank = below_size("RANK")?;
        let local_rank = below_size("LOCAL_RANK")?;
        let addr = required("MASTER_ADDR")?.trim().to_string();
        if addr.is_empty() {
            bail!("MASTER_ADDR is empty: set it to rank 0's host name or address");
        }
        let port = required("MASTER_PORT")?;
        let port = match port.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => bail!("MASTER_PORT={port:?} is not a port number (1 to 65535)"),
        };
        Ok(World {
            rank,
            size,
            local_rank,
            master: Some(Master { addr, port }),
        })
    }

    /// Whether this is rank 0 (the one that writes the run folder).
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(vars: &[(&str, &str)]) -> Result<World> {
        World::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    const FULL: [(&str, &str); 5] = [
        ("WORLD_SIZE", "4"),
        ("RANK", "3"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
    ];

    /// FULL with `name` set to `value` (removed for `None`).
    fn with(name: &str, value: Option<&str>) -> Vec<(&'static str, String)> {
        FULL.iter()
            .filter_map(|&(k, v)| match k == name {
                true => value.map(|x| (k, x.to_string())),
                false => Some((k, v.to_string())),
            })
            .collect()
    }

    fn error(vars: Vec<(&'static str, String)>) -> String {
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        world(&pairs).unwrap_err().to_string()
    }

    #[test]
    fn torchrun_variables_make_a_world() {
        assert_eq!(
            world(&FULL).unwrap(),
            World {
                rank: 3,
                size: 4,
                local_rank: 1,
                master: Some(Master {
                    addr: "node0".into(),
                    port: 29500
                }),
            }
        );
    }

    #[test]
    fn no_world_size_or_a_world_of_one_is_a_single_process() {
        assert_eq!(world(&[]).unwrap(), World::SINGLE);
        assert_eq!(world(&[("WORLD_SIZE", "1")]).unwrap(), World::SINGLE);
        assert_eq!(
            world(&[("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")]).unwrap(),
            World::SINGLE
        );
    }

    #[test]
    fn bad_or_missing_values_are_named() {
        let cases = [
            (with("WORLD_SIZE", Some("0")), "WORLD_SIZE=\"0\""),
            (with("WORLD_SIZE", Some("two")), "WORLD_SIZE=\"two\""),
            (with("RANK", None), "RANK is not set"),
            (
                with("RANK", Some("4")),
                "RANK=\"4\" is not below WORLD_SIZE=4",
            ),
            (
                with("RANK", Some("-1")),
                "RANK=\"-1\" is not a whole number",
            ),
            (with("LOCAL_RANK", None), "LOCAL_RANK is not set"),
            (with("LOCAL_RANK", Some("x")), "LOCAL_RANK=\"x\""),
            (with("MASTER_ADDR", None), "MASTER_ADDR is not set"),
            (with("MASTER_ADDR", Some(" ")), "MASTER_ADDR is empty"),
            (with("MASTER_PORT", None), "MASTER_PORT is not set"),
            (with("MASTER_PORT", Some("0")), "MASTER_PORT=\"0\""),
            (with("MASTER_PORT", Some("70000")), "MASTER_PORT=\"70000\""),
        ];
        for (vars, expected) in cases {
            let e = error(vars);
            assert!(e.contains(expected), "{e:?} should contain {expected:?}");
        }
        let e = world(&[("RANK", "1")]).unwrap_err().to_string();
        assert!(e.contains("RANK=1 is set but WORLD_SIZE is not"), "{e}");
        let e = world(&[("WORLD_SIZE", "1"), ("RANK", "1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("RANK=\"1\" with WORLD_SIZE=1"), "{e}");
    }
}
