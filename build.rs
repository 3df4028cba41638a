fn main() {
  napi_build::setup();
  // Linux: code that only some configurations run (TLS, S3) is laid out apart from the request
  // path's, so a process that never runs it does not hold it in memory (link/cold.ld says why).
  // A `-T` script that uses INSERT adds to the linker's default layout (GNU ld and lld alike).
  println!("cargo:rerun-if-changed=link/cold.ld");
  if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = std::path::Path::new(&root).join("link/cold.ld");
    println!("cargo:rustc-link-arg-cdylib=-Wl,-T,{}", script.display());
  }
}
