"""Write a small structured mesh: the nodes of a unit square, one per line.

mesh.csv has columns i, j, x, y. solve.py reads it back and works out the
grid size from the largest i and j.
"""

import csv
import sys

NX, NY = 41, 41  # nodes along x and y


def main() -> int:
    with open("mesh.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["i", "j", "x", "y"])
        for j in range(NY):
            for i in range(NX):
                writer.writerow([i, j, f"{i / (NX - 1):.6f}", f"{j / (NY - 1):.6f}"])
    print(f"wrote mesh.csv: {NX} x {NY} = {NX * NY} nodes on the unit square")
    return 0


if __name__ == "__main__":
    sys.exit(main())
