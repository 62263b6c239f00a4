"""Triton kernels for lolcats-lab, installed as ``lolcats_lab.kernels``.

This folder is mapped to the subpackage ``lolcats_lab.kernels`` by pyproject.toml. It is not meant to be
imported as a top-level ``kernels``: that name belongs to a Hugging Face package that transformers
probes for. When Python runs from the repository root, the folder is on sys.path and transformers' probe
(``is_kernels_available``) may import it as ``kernels``; importing must then neither fail (transformers
does not catch the error) nor look like the Hugging Face package (no ``__version__``, no exports), so
the probe answers False. tests/test_packaging.py checks both.
"""

if __name__ == "lolcats_lab.kernels":
    pass  # public ops live in the submodules: lolcats_lab.kernels.linear_attn, .hybrid_attn, .decode
