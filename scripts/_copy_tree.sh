# Sourced by scripts/sanitize.sh and scripts/valgrind.sh: copy the source tree (tracked and
# untracked-but-not-ignored files, no build outputs) into a fresh temporary directory, print it.
copy_tree() {
    local root tmp
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/fastopt-check.XXXXXX")"
    (cd "$root" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | (cd "$tmp" && tar -xf -)
    echo "$tmp"
}
