//! `cim-cpu bench --breakdown` end to end: the extra profiled step is printed as a table
//! and written into the JSON report, per op and per GEMM shape.

use std::process::Command;

#[test]
fn bench_breakdown_reports_time_per_op() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_cim-cpu"))
        .args(["bench", "--model", "micro", "--batch", "2", "--steps", "1"])
        .args(["--breakdown", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("layernorm_forward"), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = report["breakdown"].as_array().unwrap();
    let row = |op: &str| rows.iter().find(|r| r["op"] == op);
    for op in ["gemm", "layernorm_forward"] {
        let r = row(op).unwrap_or_else(|| panic!("no {op} in {rows:?}"));
        assert!(r["calls"].as_u64().unwrap() > 0);
        assert!(r["ms"].as_f64().unwrap() >= 0.0);
    }
    assert!(row("gemm").unwrap()["tflops"].is_number());
    assert!(row("layernorm_forward").unwrap()["tflops"].is_null());
    // The ops' times lie within the profiled step's wall time.
    let ops_ms = report["profiled_ops_ms"].as_f64().unwrap();
    assert!(ops_ms > 0.0 && ops_ms <= report["profiled_step_ms"].as_f64().unwrap());
    assert!(!report["gemm_shapes"].as_array().unwrap().is_empty());
}
