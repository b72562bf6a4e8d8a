"""Write scikit-learn's bundled digits as PNG class folders under data/digits/ (the quickstart's data).

Run automatically by the quickstart recipe when data/digits/ is missing; the generated files are git-ignored.
"""

from pathlib import Path

from tlkit.data.generate import write_digits

if __name__ == "__main__":
    target = Path(__file__).resolve().parent / "digits"
    existed = target.exists()
    write_digits(target)
    print(f"{target}: {'already present' if existed else 'written'} ({sum(1 for _ in target.rglob('*.png'))} images)")
