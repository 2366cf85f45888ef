Hostname vm
Localdir src
Volume 1:
    StartingPath   .  
    EndingPath     link  
    Hash SHA1 aeb9aecac22b317a20cc208183bc0e323575ece6
Filelist 5
    new      README.txt
    new      bin/tool
    new      data.bin
    new      docs/a.txt
    new      docs/b.txt
