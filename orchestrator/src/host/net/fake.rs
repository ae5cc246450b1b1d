//! A [`NetHost`] that only remembers: the plans it was given, and whether
//! it accepts VLAN segments. For the API tests.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use super::plan::{PortPlan, Segment};
use super::{ApplyReport, NetHost, NetHostError, NetPlan};

/// The in-memory host.
#[derive(Debug, Default)]
pub struct FakeNetHost {
    plans: Mutex<Vec<NetPlan>>,
    refuse_vlan: Mutex<bool>,
}

impl FakeNetHost {
    /// Makes [`NetHost::check_segment`] refuse VLAN segments (as a host
    /// without 8021q does).
    pub fn refuse_vlan(&self, refuse: bool) {
        *self.refuse_vlan.lock().unwrap_or_else(|p| p.into_inner()) = refuse;
    }

    /// The last applied plan.
    pub fn last_plan(&self) -> Option<NetPlan> {
        self.plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .cloned()
    }

    /// How many plans were applied.
    pub fn applied(&self) -> usize {
        self.plans.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl NetHost for FakeNetHost {
    fn check_segment(&self, segment: &Segment) -> Result<(), NetHostError> {
        let refuse = *self.refuse_vlan.lock().unwrap_or_else(|p| p.into_inner());
        if refuse && matches!(segment, Segment::Vlan { .. }) {
            return Err(NetHostError::Unsupported(
                "this host's kernel has no 802.1Q VLAN support (module 8021q)".into(),
            ));
        }
        Ok(())
    }

    fn apply(&self, plan: &NetPlan) -> Result<ApplyReport, NetHostError> {
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        let changes = usize::from(plans.last() != Some(plan));
        plans.push(plan.clone());
        Ok(ApplyReport { changes })
    }

    fn open_tap(&self, port: &PortPlan) -> Result<OwnedFd, NetHostError> {
        // A descriptor that stands for the TAP: the fake VMM host only
        // counts them.
        std::fs::File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| NetHostError::Failed {
                what: format!("opening the TAP of port {}", port.id),
                reason: e.to_string(),
            })
    }
}
