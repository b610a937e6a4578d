//! `check_data`: decode every image of a dataset before any training and report every
//! problem with its file and reason, the counts, and the class balance, so a bad file is
//! found in minutes rather than hours into a run.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::dataset::{Dataset, Layout};
use crate::shards::parallel_map;

/// One problem: the file (or folder) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file or folder.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

/// Images per class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClassCount {
    /// Class name.
    pub name: String,
    /// Images listed in it.
    pub images: usize,
    /// Of those, how many failed to decode.
    pub bad: usize,
}

/// What `check_data` found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The path checked.
    pub root: PathBuf,
    /// Its layout; `None` when it could not be opened.
    pub layout: Option<Layout>,
    /// Images listed.
    pub images: usize,
    /// Images that decoded.
    pub decoded: usize,
    /// Every problem found: undecodable files, empty class folders, bad shards, or the
    /// reason the dataset could not be opened.
    pub problems: Vec<Problem>,
    /// Files that are not listed as images (hidden files, other extensions).
    pub ignored: Vec<PathBuf>,
    /// Per-class counts (empty when unlabelled).
    pub classes: Vec<ClassCount>,
    /// Smallest decoded width and height (each on its own).
    pub min_size: Option<(u32, u32)>,
    /// Largest decoded width and height (each on its own).
    pub max_size: Option<(u32, u32)>,
}

impl Report {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layout = self
            .layout
            .map_or("unopened".to_string(), |l| format!("{l:?}"));
        writeln!(
            f,
            "{}: {layout}, {} images, {} decoded, {} problems, {} ignored files",
            self.root.display(),
            self.images,
            self.decoded,
            self.problems.len(),
            self.ignored.len()
        )?;
        if let (Some(lo), Some(hi)) = (self.min_size, self.max_size) {
            writeln!(
                f,
                "  sizes: width {}..{}, height {}..{}",
                lo.0, hi.0, lo.1, hi.1
            )?;
        }
        if !self.classes.is_empty() {
            let counts: Vec<usize> = self.classes.iter().map(|c| c.images).collect();
            let (lo, hi) = (
                counts.iter().min().copied().unwrap_or(0),
                counts.iter().max().copied().unwrap_or(0),
            );
            writeln!(
                f,
                "  {} classes, {lo}..{hi} images per class",
                self.classes.len()
            )?;
            for c in &self.classes {
                writeln!(
                    f,
                    "    {:<24} {:>8} images, {} bad",
                    c.name, c.images, c.bad
                )?;
            }
        }
        for p in &self.problems {
            writeln!(f, "  PROBLEM {}: {}", p.path.display(), p.reason)?;
        }
        for p in &self.ignored {
            writeln!(f, "  ignored {}", p.display())?;
        }
        Ok(())
    }
}

/// Opens the dataset at `path` and decodes every image on all cores; never fails: a
/// dataset that cannot be opened is reported as a problem.
pub fn check_data(path: impl AsRef<Path>) -> Report {
    let root = path.as_ref().to_path_buf();
    let mut report = Report {
        root: root.clone(),
        layout: None,
        images: 0,
        decoded: 0,
        problems: Vec::new(),
        ignored: Vec::new(),
        classes: Vec::new(),
        min_size: None,
        max_size: None,
    };
    let ds = match Dataset::open(&root) {
        Ok(ds) => ds,
        Err(e) => {
            report.problems.push(Problem {
                path: e.path().map_or(root, Path::to_path_buf),
                reason: e.to_string(),
            });
            return report;
        }
    };
    report.layout = Some(ds.layout());
    report.images = ds.len();
    report.ignored = ds.ignored().to_vec();
    for e in ds.verify_containers() {
        report.problems.push(Problem {
            path: e.path().map_or(root.clone(), Path::to_path_buf),
            reason: e.to_string(),
        });
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sizes = parallel_map(0..ds.len(), threads, |i| {
        ds.load(i).map(|img| (img.width(), img.height()))
    });
    let mut classes: Vec<ClassCount> = ds
        .classes()
        .iter()
        .map(|name| ClassCount {
            name: name.clone(),
            images: 0,
            bad: 0,
        })
        .collect();
    for (i, result) in sizes.into_iter().enumerate() {
        let class = ds.label(i).and_then(|l| classes.get_mut(l));
        if let Some(c) = class {
            c.images += 1;
        }
        match result {
            Ok((w, h)) => {
                report.decoded += 1;
                let (lo, hi) = (
                    report.min_size.unwrap_or((w, h)),
                    report.max_size.unwrap_or((w, h)),
                );
                report.min_size = Some((lo.0.min(w), lo.1.min(h)));
                report.max_size = Some((hi.0.max(w), hi.1.max(h)));
            }
            Err(e) => {
                if let Some(c) = ds.label(i).and_then(|l| classes.get_mut(l)) {
                    c.bad += 1;
                }
                report.problems.push(Problem {
                    path: ds.path(i).map_or(root.clone(), Path::to_path_buf),
                    reason: e.to_string(),
                });
            }
        }
    }
    for c in &classes {
        if c.images == 0 {
            report.problems.push(Problem {
                path: root.join(&c.name),
                reason: format!("class folder '{}' holds no images", c.name),
            });
        }
    }
    report.classes = classes;
    report
}
