/* Generated source 26 of the steps context. */
int f26(int x) { return x * 26 + 1; }
