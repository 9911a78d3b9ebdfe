# Sphinx configuration of the FairQuant docs site (built by `make docs` → tools/build_docs.py).
# The site is built from nbdev's processed notebooks with their saved outputs (execution off) and works offline:
# the theme's assets and MathJax (docs/_static/mathjax, from npm `mathjax@3`) are local files, nothing is fetched.
from configparser import ConfigParser
from pathlib import Path

_root = Path(__file__).resolve().parent
while not (_root/'settings.ini').exists() and _root != _root.parent: _root = _root.parent
_cfg = ConfigParser(); _cfg.read(_root/'settings.ini')
_s = _cfg['DEFAULT'] if (_root/'settings.ini').exists() else {}

project = _s.get('title', 'FairQuant')
author = _s.get('author', '')
copyright = _s.get('copyright', '')
release = _s.get('version', '')

extensions = ['myst_nb']
myst_enable_extensions = ['dollarmath', 'amsmath', 'colon_fence', 'attrs_inline']
nb_execution_mode = 'off'                 # the notebooks are saved with their outputs (tools/exec_nbs.py)
nb_render_markdown_format = 'myst'        # show_doc output is markdown
nb_merge_streams = True
exclude_patterns = ['_build', '**.ipynb_checkpoints']
suppress_warnings = ['myst.header']       # show_doc output starts at ### inside a page
html_theme = 'sphinx_book_theme'
html_title = project
html_static_path = ['_static']
html_css_files = ['fairquant.css']
mathjax_path = 'mathjax/tex-mml-chtml.js'
html_theme_options = {'home_page_in_toc': True, 'show_toc_level': 2, 'use_download_button': False,
                      'use_fullscreen_button': False}
html_last_updated_fmt = None
html_copy_source = False
html_show_sourcelink = False
