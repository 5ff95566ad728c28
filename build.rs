//! Build script of the desktop app: Tauri's codegen reads `tauri.conf.json`
//! (window, CSP, icons) and embeds the `ui/` front end.
fn main() {
    tauri_build::build()
}
