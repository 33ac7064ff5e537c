//! The `health` and `watch` sections: what a healthy answer is, and the watch after a switch.

use std::time::Duration;

use super::Checker;
use crate::config::{ErrorWatch, Health, RawHealth, RawWatch, Watch};
use crate::error::Result;

impl Checker<'_> {
    pub(super) fn health(&self, raw: RawHealth) -> Result<Health> {
        let path = raw.path.unwrap_or_else(|| "/health".into());
        if !path.starts_with('/') || path.contains(char::is_whitespace) {
            return Err(self.err(
                "health.path",
                format!("`{path}` must start with / and hold no spaces"),
            ));
        }
        if !crate::probe_http::valid_path(&path) {
            return Err(self.err(
                "health.path",
                format!("`{path}` is not a URL path (percent-encode other characters)"),
            ));
        }
        if let Some(status) = raw.status {
            if !(100..=599).contains(&status) {
                return Err(self.err(
                    "health.status",
                    format!("{status} is not an HTTP status (100 to 599)"),
                ));
            }
        }
        let timeout = self.duration(
            "health.timeout",
            raw.timeout,
            Duration::from_secs(60),
            Duration::from_secs(3600),
        )?;
        if timeout.is_zero() {
            return Err(self.err("health.timeout", "must be more than 0"));
        }
        Ok(Health {
            path,
            status: raw.status,
            body_contains: raw.body_contains,
            timeout,
        })
    }

    pub(super) fn watch(&self, raw: RawWatch) -> Result<Watch> {
        let duration = self.duration(
            "watch.duration",
            raw.duration,
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        let interval = raw.interval.unwrap_or(Duration::from_millis(250));
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&interval) {
            return Err(self.err("watch.interval", "must be 10ms to 60s"));
        }
        let threshold_given =
            raw.max_5xx_percent.is_some() || raw.min_requests.is_some() || raw.window.is_some();
        let errors = match raw.access_log {
            None if threshold_given => {
                return Err(self.err(
                    "watch",
                    "max_5xx_percent, min_requests and window need watch.access_log (the log \
                     nginx writes for the 5xx check)",
                ))
            }
            None => None,
            Some(log) => {
                let max_5xx_percent = raw.max_5xx_percent.unwrap_or(10.0);
                if !(0.0..100.0).contains(&max_5xx_percent) {
                    return Err(self.err(
                        "watch.max_5xx_percent",
                        format!("{max_5xx_percent} must be at least 0 and below 100"),
                    ));
                }
                let window = self.duration(
                    "watch.window",
                    raw.window,
                    Duration::from_secs(5),
                    Duration::from_secs(3600),
                )?;
                if window < interval {
                    return Err(self.err("watch.window", "must be at least watch.interval"));
                }
                Some(ErrorWatch {
                    access_log: self.host_path_of(
                        "watch.access_log",
                        &log,
                        "/var/log/nginx/access.log",
                    )?,
                    max_5xx_percent,
                    min_requests: raw.min_requests.unwrap_or(20).max(1),
                    window,
                })
            }
        };
        Ok(Watch {
            duration,
            interval,
            errors,
        })
    }
}
