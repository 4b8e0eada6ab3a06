//! A plan applied for the life of `steer run` (`--profile`, `--engine kernel`):
//! restored by [`NicGuard::finish`], or on drop if the run fails on its way.

use super::{plan::Request, state, Profile};
use crate::error::Result;

pub struct NicGuard {
    iface: Option<String>,
}

impl NicGuard {
    /// Plans and applies `kernel` (the kernel engine's request), or with the XDP
    /// engine the profile alone: then it changes the NIC only, steering is XDP's.
    pub fn start(iface: &str, profile: Profile, kernel: Option<Request>, quiet: bool) -> Result<Self> {
        let req = match kernel {
            Some(r) => r,
            None if profile == Profile::None => return Ok(Self { iface: None }),
            None => Request { profile, nic_only: true, ..Default::default() },
        };
        let plan = super::plan::plan(iface, &req)?;
        if !quiet {
            print!("{}", plan.render());
        } else {
            // Notes say what the plan could not do here (the host's RFS table in a namespace).
            for n in &plan.notes {
                log::warn!("{n}");
            }
        }
        let applied = state::apply(&plan, Some(std::process::id()))?;
        for s in &applied.skipped {
            log::warn!("skipped (driver {}): {s}", plan.driver);
        }
        log::info!(
            "applied {} NIC step(s) on {iface}; snapshot at {}",
            applied.done,
            state::state_file(iface)?.display()
        );
        Ok(Self { iface: Some(iface.to_string()) })
    }

    pub fn finish(mut self) -> Result<()> {
        match self.iface.take() {
            Some(i) => {
                let done = state::restore(&i)?;
                log::info!("restored {} NIC value(s) on {i}", done.map_or(0, |d| d.len()));
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Drop for NicGuard {
    fn drop(&mut self) {
        if let Some(i) = self.iface.take() {
            if let Err(e) = state::restore(&i) {
                log::error!("restoring the NIC settings of {i}: {e}");
            }
        }
    }
}
