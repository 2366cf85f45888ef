Hostname vm
Localdir src/short-08
Volume 1:
    StartingPath   .  
    EndingPath     link  
    Hash SHA1 fa5f206c439b0419fb3048782031fc1b564e7d0c
Filelist 5
    new      README.txt
    new      bin/tool
    new      data.bin
    new      docs/a.txt
    new      docs/b.txt
