"""Low-rank maths and layers: conv geometry, schemes, SVDs and spectra, rank criteria,
factorized layers, MACs and layer shapes."""
