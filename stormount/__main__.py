from stormount.cli import main

main()
