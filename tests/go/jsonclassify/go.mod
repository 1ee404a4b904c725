module jsonclassify

go 1.21
