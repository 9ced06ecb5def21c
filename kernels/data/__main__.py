"""python -m kernels.data: rewrite tiny_tales.txt from the story grammar."""

from . import PATH, generate

PATH.write_text(generate(), encoding="utf-8")
print(f"wrote {PATH} ({PATH.stat().st_size} bytes)")
