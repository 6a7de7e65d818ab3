"""``python -m lca.cli``: the ``lca`` command without its installed script."""

from . import main

if __name__ == "__main__":
    main()
