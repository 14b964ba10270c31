"""`python -m charter`: the same entry point as the `charter` command."""

from charter.cli import main

if __name__ == "__main__":
    main()
