from layoutkit.cli import main

main()
