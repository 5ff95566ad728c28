//! Desktop notifications (sign-in needed, relay unreachable, back online)
//! through the freedesktop notification service on Linux. A desktop without
//! one only loses the popup: the notice is still in the status window.

use gangway_agent::status::Notice;

/// Shows `notice`; blocking (D-Bus), so call it off the async threads.
pub fn show(notice: &Notice) {
    #[cfg(any(target_os = "linux", target_os = "freebsd", target_os = "openbsd"))]
    {
        let r = notify_rust::Notification::new()
            .appname("Gangway")
            .summary(&notice.title)
            .body(&notice.body)
            .icon("gangway-desktop")
            .timeout(notify_rust::Timeout::Milliseconds(8000))
            .show();
        if let Err(e) = r {
            tracing::info!("no desktop notification shown ({e}): {}", notice.title);
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "freebsd", target_os = "openbsd")))]
    {
        // TODO(macOS, Windows): UNUserNotificationCenter / toast notifications.
        tracing::info!("{}: {}", notice.title, notice.body);
    }
}
