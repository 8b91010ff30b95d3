"""``python -m services.gateway``: the same as ``tether gateway``."""

from shared.cli import main

if __name__ == "__main__":
    main(["gateway"])
