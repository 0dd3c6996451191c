"""Host-side helpers shared by the command-line tools: PNG grids and figures (`images`),
console output and one-line user errors (`console`). Numpy / Pillow only; no model code."""
