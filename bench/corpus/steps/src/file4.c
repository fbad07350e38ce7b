/* Generated source 4 of the steps context. */
int f4(int x) { return x * 4 + 1; }
