//! Writes a PNG sheet of generated exemplar-context pairs from a dataset, to check the S2
//! geometry by eye (each footprint outlined on the context should show what its exemplar
//! shows, turned by the exemplar's angle; the small square marks the exemplar's top-left).
//!
//!   cargo run --release -p cim-data --example pair_sheet -- [DATASET=data/photos] [OUT=pairs.png] [PAIRS=4] [SEED=0]
//!
//! Fetch the sample photos first with `scripts/fetch-sample-data.sh`.

use std::path::PathBuf;
use std::process::ExitCode;

use cim_data::{Dataset, PairConfig, pair_sheet, sample};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dataset = args.first().map_or("data/photos", String::as_str);
    let out = PathBuf::from(args.get(1).map_or("pairs.png", String::as_str));
    let parse =
        |i: usize, default: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (count, seed) = (parse(2, 4) as usize, parse(3, 0));
    let run = || -> Result<(), cim_data::DataError> {
        let ds = Dataset::open(dataset)?;
        let cfg = PairConfig::default();
        let step = (ds.len() / count.max(1)).max(1);
        let pairs = (0..count.min(ds.len()))
            .map(|i| sample(&ds, &cfg, seed, 0, i * step))
            .collect::<Result<Vec<_>, _>>()?;
        pair_sheet(&pairs, &out)
    };
    match run() {
        Ok(()) => {
            println!("wrote {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pair_sheet: {e}");
            ExitCode::FAILURE
        }
    }
}
