#!/usr/bin/env bash
# Build the flow-agent Debian package with dpkg-deb.
#
#   packaging/deb/build.sh [--out DIR] [--wheel FILE] [--python PATH]
#                          [--compression xz|gzip|zstd]
#
# Prints the path of the .deb on stdout (progress goes to stderr).
#
# The package holds a self-contained virtualenv at /opt/flow-agent, built
# with the target's interpreter (default /usr/bin/python3, resolved to its
# versioned path, which becomes the package's dependency). A venv is not
# relocatable: its scripts' shebangs and activate files name the path it was
# made at. So it is made in a staging root, at STAGE/opt/flow-agent, then
# every mention of STAGE is cut from its text files, and the build fails if
# any remains. It is installed with --no-compile: postinst byte-compiles on
# the target, so byte-code names the installed paths and matches the
# interpreter there.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/dist"
wheel=""
python=/usr/bin/python3
compression=xz

while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --wheel) wheel=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        --compression) compression=$2; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

for tool in dpkg-deb dpkg strip; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is required" >&2; exit 1; }
done

pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
interp=/usr/bin/python$pyver
[ -x "$interp" ] || { echo "build.sh: $interp not found: the venv must use the interpreter at the path it will have on the target" >&2; exit 1; }
"$interp" -c 'import ensurepip, venv' 2>/dev/null \
    || { echo "build.sh: $interp lacks venv/ensurepip (apt-get install python3-venv)" >&2; exit 1; }

version=$("$interp" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$repo/pyproject.toml")
arch=$(dpkg --print-architecture)
maintainer=${DEB_MAINTAINER:-flow-agent maintainers <maintainers@flow-agent.example>}
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/root
venv=/opt/flow-agent
mkdir -p "$stage" "$out"

if [ -z "$wheel" ]; then
    echo "build.sh: building the wheel" >&2
    "$interp" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheels" "$repo" >&2
    wheel=$(ls "$work"/wheels/flow_agent-*.whl)
fi

echo "build.sh: installing into $venv (staged)" >&2
"$interp" -m venv "$stage$venv"
"$stage$venv/bin/python3" -m pip install --quiet --no-compile --disable-pip-version-check \
    "$wheel" >&2
# pip and setuptools are build tools; the agent does not need them at run time.
"$stage$venv/bin/python3" -m pip uninstall --quiet --yes pip setuptools >&2
rm -rf "$stage$venv"/bin/activate* "$stage$venv"/bin/Activate.ps1
find "$stage$venv" -depth -type d -name __pycache__ -exec rm -rf {} +
# Debug symbols out of the compiled extensions (their tests import them
# after installation); the empty include directory the venv made goes too.
find "$stage$venv" -type f -name '*.so*' -exec strip --strip-unneeded \
    --remove-section=.comment --remove-section=.note {} +
rmdir "$stage$venv/include/python$pyver" "$stage$venv/include" 2>/dev/null || true
# direct_url.json records where the wheel was installed from: a build path.
find "$stage$venv" -path '*.dist-info/direct_url.json' -delete
# The staging prefix out of the scripts' shebangs and pyvenv.cfg; then
# nothing may name it.
grep -rlIF "$stage" "$stage$venv" | while read -r f; do
    sed -i "s|$stage$venv|$venv|g" "$f"
done
if grep -rlF "$work" "$stage"; then
    echo "build.sh: the files above still name the build directory" >&2
    exit 1
fi

install -d "$stage/usr/bin"
ln -s "$venv/bin/flow-agent" "$stage/usr/bin/flow-agent"
install -D -m 0644 "$repo/systemd/flow-agent.service" "$stage/lib/systemd/system/flow-agent.service"
install -D -m 0644 "$repo/packaging/agent.toml" "$stage/etc/flow-agent/agent.toml"
doc=$stage/usr/share/doc/flow-agent
install -D -m 0644 "$here/copyright" "$doc/copyright"
install -m 0644 "$repo/docs/deploy.md" "$doc/deploy.md"
{
    printf 'flow-agent (%s) unstable; urgency=medium\n\n' "$version"
    printf '  * flow-agent %s, built from the project sources.\n\n' "$version"
    printf ' -- %s  %s\n' "$maintainer" "$(date -u -R -d "@$epoch")"
} | gzip -9n > "$doc/changelog.gz"
install -D -m 0644 "$here/lintian-overrides" "$stage/usr/share/lintian/overrides/flow-agent"

# Modes: directories 0755, files 0644 unless executable (venv scripts,
# compiled extensions keep their +x).
find "$stage" -type d -exec chmod 0755 {} +
find "$stage" -type f ! -perm /111 -exec chmod 0644 {} +
find "$stage" -type f -perm /111 -exec chmod 0755 {} +

install -d -m 0755 "$stage/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$stage/DEBIAN/$script"
done
install -m 0644 "$here/conffiles" "$stage/DEBIAN/conffiles"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -print0 | sort -z \
    | xargs -0 md5sum | sed 's|  \./|  |') > "$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
    -e "s|@INSTALLED_SIZE@|$size|" -e "s|@PYTHON_PACKAGE@|python$pyver|" \
    "$here/control.in" > "$stage/DEBIAN/control"

# Reproducible timestamps, root ownership without fakeroot.
find "$stage" -newermt "@$epoch" -print0 | xargs -0r touch --no-dereference --date="@$epoch"
deb=$out/flow-agent_${version}_${arch}.deb
SOURCE_DATE_EPOCH=$epoch dpkg-deb --root-owner-group -Z"$compression" --build "$stage" "$deb" >&2
echo "$deb"
