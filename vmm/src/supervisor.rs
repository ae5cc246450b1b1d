//! The life of one guest across reboots: [`Vmm`] boots it, and boots it
//! again when it reboots (with [`OnReboot::Restart`]) or a controller asks
//! for a restart, until it powers off or is stopped. Controllers stay valid
//! across those restarts.

use std::sync::Arc;

use crate::config::VmConfig;
use crate::control::{ControlShared, VmController, VmState};
use crate::error::VmError;
use crate::vm::{ExitReason, VmHandle};

/// What a guest-initiated reboot does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnReboot {
    /// The VMM exits with status 0.
    #[default]
    Exit,
    /// The guest boots again in the same process.
    Restart,
}

/// Runs one guest until it is gone for good.
pub struct Vmm {
    config: VmConfig,
    on_reboot: OnReboot,
    control: Arc<ControlShared>,
}

impl Vmm {
    /// Prepares to run `config`; nothing starts until [`Vmm::run`].
    pub fn new(config: VmConfig, on_reboot: OnReboot) -> Result<Self, VmError> {
        let control = ControlShared::new(&config)?;
        Ok(Self {
            config,
            on_reboot,
            control,
        })
    }

    /// Starts accepting clients on the console socket, if the console is
    /// one (else does nothing). Call it after jailing the process and before
    /// filtering the calling thread: threads inherit its seccomp filter.
    /// [`Vmm::run`] starts it otherwise.
    pub fn start_console(&self) -> Result<(), VmError> {
        match &self.control.console {
            Some(hub) => hub.start().map_err(VmError::Thread),
            None => Ok(()),
        }
    }

    /// A controller for the guest, valid for the whole life of this `Vmm`.
    pub fn controller(&self) -> VmController {
        VmController {
            shared: self.control.clone(),
        }
    }

    /// Boots the guest and runs it, restarting it as configured; returns how
    /// it finally ended.
    pub fn run(&self) -> Result<ExitReason, VmError> {
        let result = self.run_boots();
        self.control.set_state(VmState::Stopped);
        result
    }

    fn run_boots(&self) -> Result<ExitReason, VmError> {
        loop {
            let vm = VmHandle::start_with(&self.config, self.control.clone())?;
            match vm.wait()? {
                ExitReason::Restart => tracing::info!("restarting the guest (requested)"),
                ExitReason::Reboot if self.on_reboot == OnReboot::Restart => {
                    tracing::info!("restarting the guest (it rebooted)")
                }
                other => return Ok(other),
            }
        }
    }
}
