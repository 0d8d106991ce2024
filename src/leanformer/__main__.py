"""``python -m leanformer <command>``: the command line of leanformer.cli. Run with -h for help."""
from .cli import main

if __name__ == "__main__":
    main()
