//! Compiles every kernel module with NVRTC for one architecture and writes the PTX, so a
//! kernel's CUDA-only errors show on a machine with no GPU. Needs libnvrtc.so.13 on the
//! library path (`scripts/install-cuda-tools.sh`).
//!
//! `cargo run -p cim-cuda --example compile_kernels -- [sm_90] [OUT_DIR]`

fn main() {
    let mut args = std::env::args().skip(1);
    let arch: &'static str = args.next().unwrap_or_else(|| "sm_90".into()).leak();
    let out = std::path::PathBuf::from(args.next().unwrap_or_else(|| "target/ptx".into()));
    std::fs::create_dir_all(&out).expect("creating the output folder");
    let mut failed = false;
    for (name, _) in cim_cuda::kernel_sources() {
        match cim_cuda::compile_module(name, arch) {
            Ok(ptx) => {
                let path = out.join(format!("{name}.ptx"));
                std::fs::write(&path, ptx.to_src()).expect("writing PTX");
                println!("{name}: ok -> {}", path.display());
            }
            Err(e) => {
                failed = true;
                println!("{name}: FAILED\n{e}");
            }
        }
    }
    std::process::exit(i32::from(failed));
}
