//! Opening "the system browser": the command in `BROWSER` if set (the
//! usual convention: a `:`-separated list of commands, `%s` standing for
//! the URL, else the URL appended), otherwise the platform's opener.

use std::process::Stdio;

/// The commands to try, in order, for opening `url`.
pub fn browser_commands(url: &str, browser_var: Option<&str>) -> Vec<Vec<String>> {
    if let Some(var) = browser_var.map(str::trim).filter(|v| !v.is_empty()) {
        return var
            .split(':')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|cmd| {
                let mut words: Vec<String> = cmd.split_whitespace().map(String::from).collect();
                if cmd.contains("%s") {
                    for w in &mut words {
                        *w = w.replace("%s", url);
                    }
                } else {
                    words.push(url.to_string());
                }
                words
            })
            .collect();
    }
    let default: &[&str] = if cfg!(target_os = "macos") {
        &["open"]
    } else if cfg!(windows) {
        // `start` goes through cmd.exe, which mangles `&` in URLs.
        &["rundll32", "url.dll,FileProtocolHandler"]
    } else {
        &["xdg-open"]
    };
    let mut words: Vec<String> = default.iter().map(|s| s.to_string()).collect();
    words.push(url.to_string());
    vec![words]
}

/// Starts the first browser command that can be started; does not wait for
/// it (it is reaped in the background). `Err` names what was tried.
pub fn open_browser(url: &str, browser_var: Option<&str>) -> Result<(), String> {
    let mut tried = Vec::new();
    for words in browser_commands(url, browser_var) {
        let Some((program, args)) = words.split_first() else {
            continue;
        };
        match tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(mut child) => {
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
                return Ok(());
            }
            Err(e) => tried.push(format!("{program}: {e}")),
        }
    }
    Err(format!("could not start a browser ({})", tried.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_variable_is_honoured() {
        let url = "http://idp/auth?a=1&b=2";
        assert_eq!(
            browser_commands(url, Some("firefox")),
            [vec!["firefox".to_string(), url.into()]]
        );
        assert_eq!(
            browser_commands(url, Some("my-browser --new-tab %s:lynx")),
            [
                vec!["my-browser".to_string(), "--new-tab".into(), url.into()],
                vec!["lynx".to_string(), url.into()]
            ]
        );
        let fallback = browser_commands(url, Some("  "));
        assert_eq!(fallback.len(), 1);
        assert_eq!(fallback[0].last().map(String::as_str), Some(url));
    }
}
