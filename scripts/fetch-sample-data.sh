#!/usr/bin/env bash
# Fetches the real sample images of shared/DATA.md into a local folder (issue 4), from the
# Debian and PyPI packages that ship them, so every machine gets the same files:
#   DIR/photos/         unlabelled real photos, flat, named <source>-<file>
#                       (opencv-doc examples, mate-backgrounds nature, scikit-image data)
#   DIR/imagenet-val/   20 ImageNet validation photos from the foolbox 3.3.4 wheel
#                       (class index in the name: imagenet_<k>_<class>.jpg)
#   DIR/fashion-mnist/  Fashion-MNIST as raw IDX files (60k train + 10k test, 28x28 grey)
# Idempotent: a group whose files are all present is not fetched again. Only the curated
# real photos are copied (no test patterns, logos, digit sheets, renders or text files).
# Needs apt-get (root), dpkg-deb, pip and unzip.
#   scripts/fetch-sample-data.sh [DIR=data]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-data}
mkdir -p "$dir/photos" "$dir/imagenet-val" "$dir/fashion-mnist"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The real photographs among opencv-doc's example data (checked by eye; synthetic
# patterns, chessboards, logos, cartoons and renders are left out).
opencv_photos=(
    aero1.jpg aero3.jpg aloeL.jpg aloeR.jpg apple.jpg baboon.jpg basketball1.png board.jpg
    box_in_scene.png building.jpg butterfly.jpg chicky_512.png ela_original.jpg fruits.jpg
    graf1.png graf3.png home.jpg left.jpg leuvenA.jpg leuvenB.jpg licenseplate_motion.jpg
    messi5.jpg orange.jpg pca_test1.jpg rubberwhale1.png squirrel_cls.jpg starry_night.jpg
    stuff.jpg sudoku.png
)
mate_photos=(
    Aqua.jpg Blinds.jpg Dune.jpg FreshFlower.jpg Garden.jpg GreenMeadow.jpg LadyBird.jpg
    RainDrops.jpg Storm.jpg TwoWings.jpg Wood.jpg YellowFlower.jpg
)
skimage_photos=(
    astronaut.png brick.png camera.png chelsea.png clock_motion.png coffee.png coins.png
    grass.png gravel.png hubble_deep_field.jpg ihc.png moon.png motorcycle_left.png
    motorcycle_right.png retina.jpg rocket.jpg
)
fmnist_files=(
    train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte
)

# all_present DEST PREFIX NAMES...: true when DEST/PREFIXNAME exists for every name.
all_present() {
    local dest=$1 prefix=$2
    shift 2
    local f
    for f in "$@"; do
        [[ -s "$dest/$prefix$f" ]] || return 1
    done
}

apt_updated=0
# deb_extract PKG: downloads the .deb into the work dir and unpacks it to $work/PKG.
deb_extract() {
    local pkg=$1
    if [[ $apt_updated == 0 ]]; then
        apt-get update -qq
        apt_updated=1
    fi
    (cd "$work" && apt-get download -qq "$pkg" 2>/dev/null)
    dpkg-deb -x "$work/${pkg}"_*.deb "$work/$pkg"
}

# copy_group SRC DEST PREFIX NAMES...: copies each name, failing loudly on a missing one
# (a package update that drops a photo should be noticed, not silently shrink the set).
copy_group() {
    local src=$1 dest=$2 prefix=$3
    shift 3
    local f
    for f in "$@"; do
        if [[ ! -s "$src/$f" ]]; then
            echo "fetch-sample-data: $f missing from $src" >&2
            exit 1
        fi
        cp "$src/$f" "$dest/$prefix$f"
    done
}

report() { # report WHAT COUNT DEST
    printf '  %-28s %3d files -> %s\n' "$1" "$2" "$3"
}

echo "fetch-sample-data: into $dir/"

if all_present "$dir/photos" opencv- "${opencv_photos[@]}"; then
    report "opencv-doc (present)" "${#opencv_photos[@]}" "$dir/photos"
else
    deb_extract opencv-doc
    copy_group "$work/opencv-doc/usr/share/doc/opencv-doc/examples/data" "$dir/photos" opencv- "${opencv_photos[@]}"
    report "opencv-doc (fetched)" "${#opencv_photos[@]}" "$dir/photos"
fi

if all_present "$dir/photos" mate- "${mate_photos[@]}"; then
    report "mate-backgrounds (present)" "${#mate_photos[@]}" "$dir/photos"
else
    deb_extract mate-backgrounds
    copy_group "$work/mate-backgrounds/usr/share/backgrounds/mate/nature" "$dir/photos" mate- "${mate_photos[@]}"
    report "mate-backgrounds (fetched)" "${#mate_photos[@]}" "$dir/photos"
fi

if all_present "$dir/photos" skimage- "${skimage_photos[@]}"; then
    report "scikit-image (present)" "${#skimage_photos[@]}" "$dir/photos"
else
    # One pinned binary wheel, whatever the local Python: the data files are the same in all.
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
        --implementation cp --platform manylinux_2_28_x86_64 scikit-image==0.26.0 -d "$work/wheels"
    unzip -q -o "$work"/wheels/scikit_image-*.whl 'skimage/data/*' -d "$work/skimage"
    copy_group "$work/skimage/skimage/data" "$dir/photos" skimage- "${skimage_photos[@]}"
    report "scikit-image (fetched)" "${#skimage_photos[@]}" "$dir/photos"
fi

imagenet_count=$(find "$dir/imagenet-val" -maxdepth 1 -name 'imagenet_*.jpg' | wc -l)
if [[ $imagenet_count -ge 20 ]]; then
    report "foolbox (present)" "$imagenet_count" "$dir/imagenet-val"
else
    python3 -m pip download --quiet --no-deps foolbox==3.3.4 -d "$work/wheels"
    unzip -q -o "$work"/wheels/foolbox-3.3.4-*.whl 'foolbox/data/imagenet_*.jpg' -d "$work/foolbox"
    cp "$work"/foolbox/foolbox/data/imagenet_*.jpg "$dir/imagenet-val/"
    imagenet_count=$(find "$dir/imagenet-val" -maxdepth 1 -name 'imagenet_*.jpg' | wc -l)
    report "foolbox (fetched)" "$imagenet_count" "$dir/imagenet-val"
fi

if all_present "$dir/fashion-mnist" "" "${fmnist_files[@]}"; then
    report "fashion-mnist (present)" "${#fmnist_files[@]}" "$dir/fashion-mnist"
else
    deb_extract dataset-fashion-mnist
    for f in "${fmnist_files[@]}"; do
        gunzip -c "$work/dataset-fashion-mnist/usr/share/datasets/fashion-mnist/$f.gz" >"$dir/fashion-mnist/$f"
    done
    report "fashion-mnist (fetched)" "${#fmnist_files[@]}" "$dir/fashion-mnist"
fi

photos=$(find "$dir/photos" -maxdepth 1 -type f | wc -l)
echo "fetch-sample-data: $photos photos, $imagenet_count ImageNet validation photos, Fashion-MNIST 60000 + 10000 in $dir/"
