/* Generated source 3 of the steps context. */
int f3(int x) { return x * 3 + 1; }
