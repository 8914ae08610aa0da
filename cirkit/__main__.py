from cirkit.cli import main

main()
