#!/usr/bin/env bash
# The base image debian-12.qcow2: Debian 12 with cloud-init, OpenSSH, the QEMU guest agent, sudo and a small
# LwM2M server, built from Debian packages only (mmdebstrap), then put into epfiot's image pool so that
# `image: debian-12.qcow2` works in a manifest. As root:
#   image/build.sh            build it if the recipe changed (else nothing), then install it into the pool
#   image/build.sh --force    build it again anyway
# Environment: EPFIOT_IMAGE_POOL (default epfiot-images), EPFIOT_IMAGE_DIR (the pool's directory when the pool
# does not exist yet; default /var/lib/epfiot/images), EPFIOT_IMAGE_CACHE (default build/images),
# DEBIAN_MIRROR (default http://deb.debian.org/debian).
#
# How it boots, and why it is built this way (measured on the machines this project runs on):
# - the host kernel does not scan MBR partitions of loop devices (`losetup -P` finds nothing), so the root
#   filesystem is made as a file of its own (`mkfs.ext4 -d`, no mount needed), extlinux is installed on it
#   through a loop mount of that file, and the file is then copied into the disk image at 1 MiB;
# - extlinux finds ldlinux.sys by sector numbers counted from the "hidden sectors" field of the boot record
#   (offset 0x1C): the partition's start is written there, since the loop mount saw the partition at 0;
# - `qemu-img convert -c` makes a compressed qcow2 (about 145 MiB) that VMs use as the backing of overlays.
set -euo pipefail
cd "$(dirname "$0")/.."

name=debian-12.qcow2
pool=${EPFIOT_IMAGE_POOL:-epfiot-images}
pool_dir_default=${EPFIOT_IMAGE_DIR:-/var/lib/epfiot/images}
cache=${EPFIOT_IMAGE_CACHE:-build/images}
recipes=${EPFIOT_IMAGE_RECIPES:-/var/lib/epfiot/image-recipes}  # the recipe each installed image was built from
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
uri=qemu:///system
aiocoap_version=0.4.17
# DTLSSocket (tinydtls) gives aiocoap CoAP over DTLS. It is a C extension: built once as a wheel by the host's
# venv, whose CPython 3.11 and glibc are the guest's (Debian 12), then installed into the image without a compiler.
dtlssocket_version=0.2.3
wheels=${EPFIOT_IMAGE_WHEELS:-build/wheels}
disk_mib=3072  # virtual size; the qcow2 holds only what is written, and cloud-init grows the root to disk_size
packages=(
  linux-image-cloud-amd64 initramfs-tools systemd-sysv udev
  cloud-init cloud-guest-utils ifupdown isc-dhcp-client
  openssh-server sudo qemu-guest-agent python3
  dbus  # systemd-logind needs it, and logind is what turns the ACPI power button into a clean shutdown
)
force=0
[[ ${1:-} == --force ]] && force=1

t0=$(date +%s)
say() { printf 'image: [%3ss] %s\n' "$(($(date +%s) - t0))" "$*"; }
die() { echo "image: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (mmdebstrap, mkfs and a loop mount need it)"
for tool in mmdebstrap extlinux mkfs.ext4 sfdisk qemu-img; do
  command -v "$tool" >/dev/null || die "$tool is missing: run scripts/setup.sh (it installs the image tools)"
done

# The image pool: the same dir pool that `epfiot apply` creates when it needs one (used as it is if it
# exists, wherever its directory is).
virsh -c "$uri" uri >/dev/null 2>&1 || die "no libvirt daemon answers at $uri (make daemon starts one)"
if ! virsh -c "$uri" pool-info "$pool" >/dev/null 2>&1; then
  virsh -q -c "$uri" pool-define-as "$pool" dir --target "$pool_dir_default" >/dev/null
  virsh -q -c "$uri" pool-build "$pool" >/dev/null
  say "defined the image pool $pool ($pool_dir_default)"
fi
[[ $(virsh -c "$uri" pool-info "$pool") =~ State:\ *running ]] || virsh -q -c "$uri" pool-start "$pool" >/dev/null
virsh -q -c "$uri" pool-autostart "$pool" >/dev/null
pool_dir=$(virsh -c "$uri" pool-dumpxml "$pool" | sed -n 's:.*<path>\(.*\)</path>.*:\1:p' | head -n 1)
target=$pool_dir/$name
mkdir -p "$pool_dir"

# The recipe is this script, the files it copies and the versions it names: when none changed, the image
# in the cache is the one this recipe makes.
recipe=$( (cat image/build.sh image/lwm2m-server.py image/files/*; echo "${packages[*]} $aiocoap_version $dtlssocket_version $mirror") \
  | sha256sum | cut -c1-16)
out=$cache/$name
mkdir -p "$cache" "$recipes"
# Builds are not byte-for-byte reproducible: what the pool holds is known by the recipe it was built from.
if ((!force)) && [[ -f $target && $(cat "$recipes/$name" 2>/dev/null) == "$recipe" ]]; then
  say "$target is up to date (recipe $recipe): \`image: $name\` in a manifest uses it"
  exit 0
fi
if ((force)) || [[ ! -f $out || $(cat "$out.recipe" 2>/dev/null) != "$recipe" ]]; then
  work=$(mktemp -d "${TMPDIR:-/var/tmp}/epfiot-image.XXXXXX")
  mnt=$work/mnt
  cleanup() { mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"; rm -rf "$work"; }
  trap cleanup EXIT
  root=$work/root

  say "debootstrap Debian 12 (${#packages[@]} packages and their dependencies; about 2 minutes)"
  mmdebstrap --quiet --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm "$root" "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
    "deb ${mirror%/debian}/debian-security bookworm-security main"

  say "the LwM2M server (aiocoap $aiocoap_version from PyPI, DTLSSocket $dtlssocket_version), cloud-init settings, boot loader config"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --no-compile \
    --target "$root/opt/lwm2m-server" "aiocoap==$aiocoap_version" 2> >(grep -v "^WARNING: Location" >&2)
  wheel=$(ls "$wheels"/dtlssocket-"$dtlssocket_version"-cp311-cp311-linux_x86_64.whl 2>/dev/null | head -n 1 || true)
  if [[ -z $wheel ]]; then
    [[ -x .venv/bin/pip ]] || die "no .venv to build the DTLSSocket wheel with: run scripts/setup.sh"
    .venv/bin/pip wheel --quiet --disable-pip-version-check --no-deps "DTLSSocket==$dtlssocket_version" -w "$wheels" \
      2> >(grep -v "^WARNING: Location" >&2)
    wheel=$(ls "$wheels"/dtlssocket-"$dtlssocket_version"-cp311-cp311-linux_x86_64.whl 2>/dev/null | head -n 1 || true)
    [[ -n $wheel ]] || die "no CPython 3.11 wheel of DTLSSocket $dtlssocket_version in $wheels (the guest runs Debian 12's 3.11)"
  fi
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --no-compile \
    --target "$root/opt/lwm2m-server" "$wheel" 2> >(grep -v "^WARNING: Location" >&2)
  install -m 0755 image/lwm2m-server.py "$root/usr/local/sbin/lwm2m-server"
  install -m 0644 image/files/lwm2m-server.service "$root/etc/systemd/system/lwm2m-server.service"
  install -m 0644 image/files/90-epfiot.cfg "$root/etc/cloud/cloud.cfg.d/90-epfiot.cfg"
  install -m 0644 image/files/80-hotplug-cpu.rules "$root/etc/udev/rules.d/80-hotplug-cpu.rules"
  # Timers that would compete with a guest's first minutes under emulation; apt runs when the user asks.
  for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
  done
  : >"$root/etc/machine-id"  # made at first boot: every VM gets its own
  rm -f "$root/etc/hostname" "$root/etc/ssh/ssh_host_"*  # cloud-init writes both per instance

  uuid=$(cat /proc/sys/kernel/random/uuid)
  kernel=$(cd "$root/boot" && ls vmlinuz-* | sort -V | tail -n 1)
  initrd=initrd.img-${kernel#vmlinuz-}
  [[ -f $root/boot/$initrd ]] || die "no $initrd in the image"
  echo "UUID=$uuid / ext4 errors=remount-ro 0 1" >"$root/etc/fstab"
  mkdir -p "$root/boot/extlinux"
  cat >"$root/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  LINUX /boot/$kernel
  INITRD /boot/$initrd
  APPEND root=UUID=$uuid ro console=tty0 console=ttyS0,115200n8
EOF

  say "root filesystem and boot loader"
  part_mib=$((disk_mib - 1))
  truncate -s "${part_mib}M" "$work/part.img"
  # No 64bit or metadata_csum: features extlinux 6.04 reads incompletely, unneeded at this size.
  mkfs.ext4 -q -F -L root -U "$uuid" -O ^64bit,^metadata_csum -d "$root" "$work/part.img"
  mkdir "$mnt"
  mount -o loop "$work/part.img" "$mnt"
  extlinux --install "$mnt/boot/extlinux" 2>/dev/null
  umount "$mnt"
  printf '\x00\x08\x00\x00' | dd of="$work/part.img" bs=1 seek=28 conv=notrunc status=none  # 2048 sectors

  truncate -s "${disk_mib}M" "$work/disk.img"
  dd if=/usr/lib/syslinux/mbr/mbr.bin of="$work/disk.img" bs=440 count=1 conv=notrunc status=none
  echo 'start=2048, type=83, bootable' | sfdisk --quiet --no-reread --no-tell-kernel "$work/disk.img"
  dd if="$work/part.img" of="$work/disk.img" bs=1M seek=1 conv=notrunc,sparse status=none

  say "compressed qcow2"
  qemu-img convert -c -O qcow2 "$work/disk.img" "$out.new"
  mv "$out.new" "$out"
  echo "$recipe" >"$out.recipe"
  say "built $out ($(du -m "$out" | cut -f1) MiB, recipe $recipe)"
else
  say "$out is up to date (recipe $recipe)"
fi

if cmp -s "$out" "$target"; then
  say "$target is this image already"
else
  if [[ -f $target ]]; then
    # Overlays read their base image: replacing it under them would corrupt their disks.
    for volume in "$pool_dir"/*; do
      [[ $volume != "$target" && -f $volume ]] || continue
      if qemu-img info -U --output=json "$volume" 2>/dev/null | grep -q "\"backing-filename\": \"\\($target\\|$name\\)\""; then
        die "$target is the base of $(basename "$volume"): delete the VMs that use it before replacing it"
      fi
    done
  fi
  cp --sparse=always "$out" "$target.new"
  mv "$target.new" "$target"
  say "installed as $target"
fi
echo "$recipe" >"$recipes/$name"
virsh -q -c "$uri" pool-refresh "$pool" >/dev/null
say "done: \`image: $name\` in a manifest uses it"
