-- A cycle of required foreign keys: no insertion order can satisfy it.
CREATE TABLE authors (id int PRIMARY KEY, name text NOT NULL, first_book_id int NOT NULL);
CREATE TABLE books (id int PRIMARY KEY, title text NOT NULL, author_id int NOT NULL REFERENCES authors);
ALTER TABLE authors ADD CONSTRAINT authors_first_book_fk FOREIGN KEY (first_book_id) REFERENCES books;
CREATE TABLE unrelated (id int PRIMARY KEY);
