//! Datasets: which images exist, in a fixed order, with optional class labels. Four sources
//! open through [`Dataset::open`]:
//! - an ImageFolder, `root/<class>/<image>` (files may sit deeper inside a class folder):
//!   classes sorted by name, labels their index, images ordered as torchvision's
//!   `ImageFolder` orders them (by folder, then name), so class indices agree with it;
//! - a flat or nested folder of images without labels (any folder that holds images
//!   directly);
//! - a text file listing one image path per line, relative to the list's folder (blank
//!   lines and `#` comments skipped);
//! - a folder of packed shards written by [`crate::pack`] (recognised by its index file).
//!
//! Images are recognised by extension (.jpg .jpeg .png .webp, any case) only to decide
//! what to list; decoding looks at the bytes. Hidden files (`.DS_Store`, `._x.jpg`) and
//! files with other extensions are left out and remembered in [`Dataset::ignored`], so
//! `check_data` can show them.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::decode::read_rgb8;
use crate::error::DataError;
use crate::rgb::RgbImage;
use crate::shards::{SHARD_INDEX, ShardSet};

/// File extensions listed as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Deepest folder nesting followed, so a symlink loop is an error rather than a hang.
const MAX_DEPTH: usize = 32;

/// How a dataset was laid out on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Layout {
    /// `root/<class>/<image>`, labelled.
    ImageFolder,
    /// Images in a folder and its subfolders, unlabelled.
    Folder,
    /// A text file of paths, unlabelled.
    List,
    /// Packed shards (labels as packed).
    Shards,
}

enum Source {
    Files {
        paths: Vec<PathBuf>,
        labels: Vec<Option<usize>>,
    },
    Shards(ShardSet),
}

/// An ordered set of images with optional labels.
pub struct Dataset {
    root: PathBuf,
    layout: Layout,
    classes: Vec<String>,
    ignored: Vec<PathBuf>,
    source: Source,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("root", &self.root)
            .field("layout", &self.layout)
            .field("len", &self.len())
            .field("classes", &self.classes.len())
            .finish()
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Whether `path` has one of [`IMAGE_EXTENSIONS`].
pub fn has_image_extension(path: &Path) -> bool {
    path.extension().is_some_and(|e| {
        let e = e.to_string_lossy();
        IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x))
    })
}

/// The entries of a folder sorted by name, each with whether it is a folder (symlinks
/// followed).
fn sorted_entries(dir: &Path) -> Result<Vec<(PathBuf, bool)>, DataError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| DataError::unreadable(dir, e))? {
        let entry = entry.map_err(|e| DataError::unreadable(dir, e))?;
        let path = entry.path();
        // The directory entry's own type costs no extra system call (a million-file
        // ImageFolder lists in seconds); only symlinks are followed with a stat. A dangling
        // symlink is listed as a file, so loading it names it.
        let kind = entry
            .file_type()
            .map_err(|e| DataError::unreadable(&path, e))?;
        let is_dir = if kind.is_symlink() {
            fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false)
        } else {
            kind.is_dir()
        };
        out.push((path, is_dir));
    }
    out.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
    Ok(out)
}

/// Lists the images below `dir`, ordered by (folder, name) as Python's `sorted(os.walk())`.
fn walk(
    dir: &Path,
    depth: usize,
    files: &mut Vec<PathBuf>,
    ignored: &mut Vec<PathBuf>,
) -> Result<(), DataError> {
    if depth > MAX_DEPTH {
        return Err(DataError::dataset(
            dir,
            format!("folders nested deeper than {MAX_DEPTH} (a symlink loop?)"),
        ));
    }
    for (path, is_dir) in sorted_entries(dir)? {
        if is_dir {
            if !is_hidden(&path) {
                walk(&path, depth + 1, files, ignored)?;
            }
        } else if !is_hidden(&path) && has_image_extension(&path) {
            files.push(path);
        } else {
            ignored.push(path);
        }
    }
    Ok(())
}

/// Sorts paths by (parent folder as a string, file name): the order of torchvision's
/// `for root, _, names in sorted(os.walk(d)): for name in sorted(names)`.
fn sort_like_os_walk(files: &mut [PathBuf]) {
    files.sort_by(|a, b| {
        let key = |p: &PathBuf| {
            (
                p.parent().map(|q| q.as_os_str().to_owned()),
                p.file_name().map(|n| n.to_owned()),
            )
        };
        key(a).cmp(&key(b))
    });
}

impl Dataset {
    /// Opens a dataset (see the module notes for the layouts). An empty dataset is an
    /// error naming the path.
    pub fn open(path: impl AsRef<Path>) -> Result<Dataset, DataError> {
        let path = path.as_ref();
        let meta = fs::metadata(path).map_err(|e| DataError::unreadable(path, e))?;
        let ds = if meta.is_file() {
            Self::open_list(path)?
        } else if path.join(SHARD_INDEX).is_file() {
            let set = ShardSet::open(path)?;
            Dataset {
                root: path.to_path_buf(),
                layout: Layout::Shards,
                classes: set.classes().to_vec(),
                ignored: Vec::new(),
                source: Source::Shards(set),
            }
        } else {
            Self::open_folder(path)?
        };
        if ds.is_empty() {
            return Err(DataError::dataset(
                path,
                "no images found (looked for .jpg .jpeg .png .webp files)",
            ));
        }
        Ok(ds)
    }

    fn open_folder(root: &Path) -> Result<Dataset, DataError> {
        let entries = sorted_entries(root)?;
        let holds_images = entries
            .iter()
            .any(|(p, is_dir)| !is_dir && !is_hidden(p) && has_image_extension(p));
        let class_dirs: Vec<&PathBuf> = entries
            .iter()
            .filter(|(p, is_dir)| *is_dir && !is_hidden(p))
            .map(|(p, _)| p)
            .collect();
        let mut ignored = Vec::new();
        if holds_images || class_dirs.is_empty() {
            let mut files = Vec::new();
            walk(root, 0, &mut files, &mut ignored)?;
            sort_like_os_walk(&mut files);
            let labels = vec![None; files.len()];
            return Ok(Dataset {
                root: root.to_path_buf(),
                layout: Layout::Folder,
                classes: Vec::new(),
                ignored,
                source: Source::Files {
                    paths: files,
                    labels,
                },
            });
        }
        // Files beside the class folders (a README, .DS_Store) are not images of any class.
        ignored.extend(
            entries
                .iter()
                .filter(|(_, is_dir)| !is_dir)
                .map(|(p, _)| p.clone()),
        );
        let mut classes = Vec::new();
        let mut paths = Vec::new();
        let mut labels = Vec::new();
        for (label, dir) in class_dirs.into_iter().enumerate() {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            classes.push(name);
            let mut files = Vec::new();
            walk(dir, 1, &mut files, &mut ignored)?;
            sort_like_os_walk(&mut files);
            labels.extend(std::iter::repeat_n(Some(label), files.len()));
            paths.extend(files);
        }
        Ok(Dataset {
            root: root.to_path_buf(),
            layout: Layout::ImageFolder,
            classes,
            ignored,
            source: Source::Files { paths, labels },
        })
    }

    fn open_list(list: &Path) -> Result<Dataset, DataError> {
        let not_a_list = |what: &str| {
            DataError::dataset(
                list,
                format!(
                    "{what}, not a dataset: pass a folder of images or a text file listing image paths, one per line"
                ),
            )
        };
        if has_image_extension(list) {
            return Err(not_a_list("a single image"));
        }
        let text = fs::read_to_string(list).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => not_a_list("not a text file (not UTF-8)"),
            _ => DataError::unreadable(list, e),
        })?;
        let base = list.parent().unwrap_or(Path::new("."));
        let paths: Vec<PathBuf> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| base.join(l))
            .collect();
        let labels = vec![None; paths.len()];
        Ok(Dataset {
            root: list.to_path_buf(),
            layout: Layout::List,
            classes: Vec::new(),
            ignored: Vec::new(),
            source: Source::Files { paths, labels },
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        match &self.source {
            Source::Files { paths, .. } => paths.len(),
            Source::Shards(s) => s.len(),
        }
    }

    /// Whether there are no images (never true for an opened dataset).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The path the dataset was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How it is laid out.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Class names, sorted; empty when unlabelled. A class folder without images keeps its
    /// place, so indices match torchvision's `class_to_idx`.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Files seen while listing that are not images (hidden files, other extensions).
    pub fn ignored(&self) -> &[PathBuf] {
        &self.ignored
    }

    /// The label of image `i`; `None` when unlabelled or out of range.
    pub fn label(&self, i: usize) -> Option<usize> {
        match &self.source {
            Source::Files { labels, .. } => labels.get(i).copied().flatten(),
            Source::Shards(s) => s.label(i),
        }
    }

    /// The file of image `i` (for shards: the file it was packed from); `None` out of
    /// range.
    pub fn path(&self, i: usize) -> Option<&Path> {
        match &self.source {
            Source::Files { paths, .. } => paths.get(i).map(PathBuf::as_path),
            Source::Shards(s) => s.path(i),
        }
    }

    /// Reads and decodes image `i` to RGB8; errors name the file.
    pub fn load(&self, i: usize) -> Result<RgbImage, DataError> {
        match &self.source {
            Source::Files { paths, .. } => {
                let path = paths.get(i).ok_or_else(|| self.out_of_range(i))?;
                read_rgb8(path)
            }
            Source::Shards(s) => s.load(i),
        }
    }

    /// Whole-file checks beyond decoding each image (shard checksums); empty for files.
    pub(crate) fn verify_containers(&self) -> Vec<DataError> {
        match &self.source {
            Source::Files { .. } => Vec::new(),
            Source::Shards(s) => s.verify_files(),
        }
    }

    fn out_of_range(&self, i: usize) -> DataError {
        DataError::dataset(
            &self.root,
            format!("image index {i} out of range ({} images)", self.len()),
        )
    }
}
