module previewd.local/testenv/images/app

go 1.26.0
