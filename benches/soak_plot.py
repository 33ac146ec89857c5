"""Plot a `groupcast-bench soak` CSV: the edge's RSS, open file descriptors
and tokio tasks over time, churn phases shaded (benches/soak.sh)."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    rows = list(csv.DictReader(open(src)))
    t = [float(r["t_s"]) / 60 for r in rows]
    series = [
        ("RSS (MiB)", [int(r["rss_kib"]) / 1024 for r in rows]),
        ("open file descriptors", [int(r["fds"]) for r in rows]),
        ("tokio tasks", [float(r["tasks"]) for r in rows]),
        ("protocol connections", [float(r["connections"]) for r in rows]),
    ]
    fig, axes = plt.subplots(len(series), 1, figsize=(10, 9), sharex=True)
    for ax, (name, ys) in zip(axes, series):
        ax.plot(t, ys, marker=".", linewidth=1)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        for i, r in enumerate(rows):
            if r["phase"] == "churn" and i + 1 < len(rows):
                ax.axvspan(t[i], t[i + 1], color="orange", alpha=0.15, linewidth=0)
    axes[-1].set_xlabel("minutes (shaded: churn connections open)")
    errors = rows[-1]["unexpected_errors"] if rows else "?"
    fig.suptitle(f"groupcast edge soak: {len(rows)} samples, unexpected errors: {errors}")
    fig.tight_layout()
    fig.savefig(dst, dpi=80)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
