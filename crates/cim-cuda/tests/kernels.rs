//! Every kernel module compiles with NVRTC for the H100 (sm_90), and ptxas reports no
//! register spills; the register/shared-memory report is kept in
//! `kernels-sm_90.txt` beside this crate, so a kernel change that costs registers shows in
//! review. Needs NVRTC and ptxas (`scripts/install-cuda-tools.sh`); without them the test
//! prints why and passes, unless `CIM_REQUIRE_NVRTC=1` (CI sets it). `CIM_BLESS=1` rewrites
//! the kept report.

use std::path::{Path, PathBuf};
use std::process::Command;

const ARCH: &str = "sm_90";

fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/cuda-tools/nvidia/cu13")
}

fn ptxas() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CIM_PTXAS") {
        return Some(PathBuf::from(p));
    }
    let bundled = tools_dir().join("bin/ptxas");
    bundled.is_file().then_some(bundled)
}

/// One line per kernel from `ptxas -v`: registers, spills, stack, shared memory.
fn resource_report(ptxas: &Path, ptx: &Path) -> Result<Vec<String>, String> {
    let out = Command::new(ptxas)
        .args(["-arch", ARCH, "-v", "-o", "/dev/null"])
        .arg(ptx)
        .output()
        .map_err(|e| format!("running {}: {e}", ptxas.display()))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("ptxas rejected {}:\n{log}", ptx.display()));
    }
    let module = ptx.file_stem().unwrap().to_string_lossy().to_string();
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut frame = String::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.split('\'').next().unwrap_or_default().to_string();
        } else if line.contains("bytes stack frame") {
            frame = line.trim().to_string();
        } else if let Some(used) = line.split("Used ").nth(1) {
            lines.push(format!("{module}/{current}: {used}; {frame}"));
        }
    }
    Ok(lines)
}

#[test]
fn every_kernel_compiles_for_sm_90_without_spills() {
    let required = std::env::var("CIM_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    if let Some(reason) = cim_cuda::nvrtc_unavailable_reason() {
        assert!(!required, "CIM_REQUIRE_NVRTC=1 but {reason}");
        eprintln!("skipped: {reason}");
        return;
    }
    let ptx_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ptx");
    std::fs::create_dir_all(&ptx_dir).unwrap();
    let mut report = Vec::new();
    let ptxas = ptxas();
    assert!(
        ptxas.is_some() || !required,
        "CIM_REQUIRE_NVRTC=1 but ptxas was not found"
    );
    for (name, _) in cim_cuda::kernel_sources() {
        let ptx = cim_cuda::compile_module(name, ARCH).unwrap_or_else(|e| panic!("{e}"));
        let path = ptx_dir.join(format!("{name}.ptx"));
        std::fs::write(&path, ptx.to_src()).unwrap();
        if let Some(ptxas) = &ptxas {
            report.extend(resource_report(ptxas, &path).unwrap_or_else(|e| panic!("{e}")));
        }
    }
    if ptxas.is_none() {
        eprintln!("every module compiled; no ptxas, so no register report");
        return;
    }
    report.sort();
    let spilling: Vec<&String> = report
        .iter()
        .filter(|l| !l.contains("0 bytes spill stores, 0 bytes spill loads"))
        .collect();
    assert!(
        spilling.is_empty(),
        "kernels spill registers:\n{spilling:#?}"
    );
    let text = format!(
        "# ptxas -arch {ARCH} -v of every kernel (tests/kernels.rs; CIM_BLESS=1 rewrites it)\n{}\n",
        report.join("\n")
    );
    let kept = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("kernels-{ARCH}.txt"));
    if std::env::var("CIM_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&kept, &text).unwrap();
        return;
    }
    let old = std::fs::read_to_string(&kept).unwrap_or_default();
    assert!(
        old == text,
        "the kernels' resource report changed; review it and rerun with CIM_BLESS=1 to keep it:\n{text}"
    );
}
