"""Steady heat conduction on the mesh from make_mesh.py, by Jacobi iteration.

Laplace's equation on the unit square: the top edge is held at 100 degrees,
the other three at 0. Each sweep replaces every interior temperature by the
mean of its four neighbours. Progress goes to stdout; the temperature field
goes to results/solution.csv (columns x, y, temperature).
"""

import csv
import math
import os
import sys

SWEEPS = 2000
REPORT_EVERY = 200
TOP, OTHERS = 100.0, 0.0


def read_mesh(path: str) -> tuple[int, int, dict[tuple[int, int], tuple[float, float]]]:
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: run make_mesh.py first")
    nodes = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            nodes[int(row["i"]), int(row["j"])] = (float(row["x"]), float(row["y"]))
    nx = max(i for i, _ in nodes) + 1
    ny = max(j for _, j in nodes) + 1
    if len(nodes) != nx * ny:
        raise SystemExit(f"{path}: expected {nx * ny} nodes for a {nx} x {ny} grid, found {len(nodes)}")
    return nx, ny, nodes


def exact_centre(terms: int = 50) -> float:
    """Series solution at (0.5, 0.5), to compare the converged value with."""
    total = 0.0
    for n in range(1, 2 * terms, 2):
        total += (
            4
            * TOP
            / (n * math.pi)
            * math.sin(n * math.pi / 2)
            * math.sinh(n * math.pi / 2)
            / math.sinh(n * math.pi)
        )
    return total


def main() -> int:
    nx, ny, nodes = read_mesh("mesh.csv")
    print(f"read mesh.csv: {nx} x {ny} grid, {len(nodes)} nodes", flush=True)

    # t[j][i]; boundary rows/columns stay fixed.
    t = [[OTHERS] * nx for _ in range(ny)]
    t[ny - 1] = [TOP] * nx
    for sweep in range(1, SWEEPS + 1):
        new = [row[:] for row in t]
        change = 0.0
        for j in range(1, ny - 1):
            above, row, below = t[j + 1], t[j], t[j - 1]
            out = new[j]
            for i in range(1, nx - 1):
                value = 0.25 * (row[i - 1] + row[i + 1] + above[i] + below[i])
                change = max(change, abs(value - row[i]))
                out[i] = value
        t = new
        if sweep % REPORT_EVERY == 0 or sweep == SWEEPS:
            print(
                f"sweep {sweep:5d}/{SWEEPS}  max change {change:.3e}  centre {t[ny // 2][nx // 2]:.3f}",
                flush=True,
            )

    centre = t[ny // 2][nx // 2]
    print(
        f"centre temperature {centre:.3f} (series solution {exact_centre():.3f})",
        flush=True,
    )

    os.makedirs("results", exist_ok=True)
    with open(os.path.join("results", "solution.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x", "y", "temperature"])
        for j in range(ny):
            for i in range(nx):
                x, y = nodes[i, j]
                writer.writerow([f"{x:.6f}", f"{y:.6f}", f"{t[j][i]:.6f}"])
    print(f"wrote results/solution.csv ({nx * ny} rows)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
