//! Threshold logic for one endpoint: consecutive results decide transitions, which damps
//! flapping. Pure.

use crate::model::HealthStatus;

/// Consecutive probe results of one endpoint since the prober took over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracker {
    /// Successes in a row.
    ok_streak: u32,
    /// Failures in a row.
    fail_streak: u32,
}

impl Tracker {
    /// Records one result; returns the new status when a threshold is crossed and the
    /// endpoint is not already in it. Draining endpoints are the operator's: never changed.
    pub fn observe(
        &mut self,
        ok: bool,
        current: HealthStatus,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<HealthStatus> {
        if ok {
            self.ok_streak = self.ok_streak.saturating_add(1);
            self.fail_streak = 0;
        } else {
            self.fail_streak = self.fail_streak.saturating_add(1);
            self.ok_streak = 0;
        }
        if current == HealthStatus::Draining {
            return None;
        }
        if ok && self.ok_streak >= healthy_threshold && current != HealthStatus::Healthy {
            return Some(HealthStatus::Healthy);
        }
        if !ok && self.fail_streak >= unhealthy_threshold && current != HealthStatus::Unhealthy {
            return Some(HealthStatus::Unhealthy);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthStatus::*;

    #[test]
    fn transitions_need_consecutive_results() {
        let mut t = Tracker::default();
        assert_eq!(t.observe(false, Healthy, 2, 3), None);
        assert_eq!(t.observe(false, Healthy, 2, 3), None);
        assert_eq!(
            t.observe(true, Healthy, 2, 3),
            None,
            "a success resets the failure streak"
        );
        assert_eq!(t.observe(false, Healthy, 2, 3), None);
        assert_eq!(t.observe(false, Healthy, 2, 3), None);
        assert_eq!(t.observe(false, Healthy, 2, 3), Some(Unhealthy));
        assert_eq!(t.observe(true, Unhealthy, 2, 3), None);
        assert_eq!(t.observe(true, Unhealthy, 2, 3), Some(Healthy));
    }

    #[test]
    fn no_transition_into_the_current_status_or_out_of_draining() {
        let mut t = Tracker::default();
        assert_eq!(t.observe(true, Healthy, 1, 1), None);
        assert_eq!(t.observe(false, Draining, 1, 1), None);
        assert_eq!(t.observe(true, Unknown, 1, 1), Some(Healthy));
    }
}
