from tokred.sweep.run import main

main()
