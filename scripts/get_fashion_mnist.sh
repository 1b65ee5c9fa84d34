#!/usr/bin/env bash
# Make Fashion-MNIST available offline: Debian's dataset-fashion-mnist package puts the four IDX files
# in /usr/share/datasets/fashion-mnist. Where that cannot be done (not root, no apt), e2mc falls back
# to a torchvision root or torchvision's download (see e2mc/data/fashion_mnist.py).
set -u
DEST=/usr/share/datasets/fashion-mnist
if [ -f "$DEST/train-images-idx3-ubyte.gz" ]; then
  echo "Fashion-MNIST: found in $DEST"
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Fashion-MNIST: installing the Debian package dataset-fashion-mnist"
  if ! apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1
  fi
  [ -f "$DEST/train-images-idx3-ubyte.gz" ] && { echo "Fashion-MNIST: installed in $DEST"; exit 0; }
  echo "Fashion-MNIST: apt-get could not install dataset-fashion-mnist; falling back to torchvision's download"
else
  echo "Fashion-MNIST: not root or no apt-get; falling back to torchvision's download (needs internet)"
fi
exit 0
