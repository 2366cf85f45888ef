Hostname vm
Localdir src
Volume 1:
    StartingPath   .  
    EndingPath     link  
    Hash SHA1 28b69db75ba5319b1589407d53d18b8fa5cc6485
Filelist 2
    changed  data.bin
    deleted  docs/b.txt
